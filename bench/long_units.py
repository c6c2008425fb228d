"""Issue 10's size limits: modules over 500 lines and functions over 80 code lines.

Code lines exclude the docstring, blank lines and comment-only lines; nested functions
are counted on their own (and inside their parent). Usage::

    python3 bench/long_units.py [diffgui]

The exceptions, with their reasons, are listed in docs/architecture.md.
"""

import ast
import pathlib
import sys


def code_lines(node, lines):
    """Lines of ``node`` that hold code (its docstring, blanks and comments excluded)."""
    skip = set()
    body = getattr(node, "body", [])
    if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        skip.update(range(body[0].lineno, body[0].end_lineno + 1))
    n = 0
    for i in range(node.lineno, node.end_lineno + 1):
        text = lines[i - 1].strip()
        if i not in skip and text and not text.startswith("#"):
            n += 1
    return n


def long_units(root, max_module=500, max_function=80):
    """``(modules, functions)``: lists of ``(lines, where)`` above the limits, longest first."""
    modules, functions = [], []
    for path in sorted(pathlib.Path(root).rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        if len(lines) > max_module:
            modules.append((len(lines), str(path)))

        def walk(node, prefix=""):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = code_lines(child, lines)
                    if n > max_function:
                        functions.append((n, f"{path}:{child.lineno} {prefix}{child.name}"))
                    walk(child, prefix + child.name + ".")
                elif isinstance(child, ast.ClassDef):
                    walk(child, prefix + child.name + ".")
                else:
                    walk(child, prefix)

        walk(ast.parse(source))
    return sorted(modules, reverse=True), sorted(functions, reverse=True)


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    modules, functions = long_units(args[0] if args else "diffgui")
    print("modules over 500 lines:")
    for n, where in modules:
        print(f"  {n:5d}  {where}")
    print("functions over 80 code lines:")
    for n, where in functions:
        print(f"  {n:5d}  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
