"""Starting the window from the command line, including the scripted screenshot mode.

``run_app(args)`` takes the namespace of :func:`diffgui.cli.build_gui_parser`.
With ``--screenshot`` nothing waits for a user: errors go to stderr instead of
message boxes, the PNG is written once the pair is shown (and the run has
finished when ``--run`` is given), and the application exits with status 0 on
success, 1 on failure.
"""

from __future__ import annotations

import os
import sys

from PyQt6 import QtCore, QtWidgets

__all__ = ["run_app", "ScriptedSession", "get_app"]


def get_app(argv=None) -> QtWidgets.QApplication:
    """The QApplication (created once)."""
    app = QtWidgets.QApplication.instance()
    if app is None:
        app = QtWidgets.QApplication(list(argv or sys.argv[:1]))
        app.setApplicationName("diffgui")
        app.setOrganizationName("diffgui")
    return app


class ScriptedSession(QtCore.QObject):
    """Drives a window through ``--method/--run/--screenshot/--blink`` and reports the outcome."""

    def __init__(self, window, args, app):
        super().__init__(window)
        self.window, self.args, self.app = window, args, app
        self.status = 0
        self.errors = []
        if args.screenshot:
            window.show_error = self._error  # nobody is there to close a message box

    def _error(self, title, message):
        self.errors.append(f"{title}: {message}")
        print(f"diffgui: {title}: {message}", file=sys.stderr)
        self.status = 1

    def start(self) -> None:
        w, a = self.window, self.args
        opened = True
        if a.demo:
            opened = w.open_demo(a.seed)
        elif a.files:
            opened = w.open_pair(a.files[0], a.files[1])
        if a.method:
            try:
                w.method_panel.set_method(a.method)
            except Exception as exc:
                w.show_error("Method", str(exc))
                opened = False
        if a.blink:
            w.show_blink(True)
        if a.run and opened and w.pair is not None:
            w.controller.finished.connect(lambda *x: self._after_run())
            w.controller.failed.connect(lambda *x: self._after_run())
            if not w.start_run():
                self._after_run()
            return
        if a.run and not opened:
            self.status = 1
        self._after_run()

    def _after_run(self) -> None:
        if self.window.run is None and self.args.run:
            self.status = 1
        if self.args.screenshot:
            if self.args.blink:
                self.window.blink.sync_images()
            self._waited = 0
            QtCore.QTimer.singleShot(200, self._shoot_when_found)

    def _shoot_when_found(self) -> None:
        """Shoot once the Candidates dock has its result (at most 60 s later)."""
        vetting = getattr(self.window, "vetting", None)
        if vetting is not None and vetting.searching() and self._waited < 600:
            self._waited += 1
            QtCore.QTimer.singleShot(100, self._shoot_when_found)
            return
        QtCore.QTimer.singleShot(100 if self._waited else 0, self._shoot)

    def _shoot(self) -> None:
        path = os.path.abspath(self.args.screenshot)
        try:
            self.window.save_window_png(path)
            print(f"diffgui: screenshot written to {path}")
        except Exception as exc:
            print(f"diffgui: cannot write the screenshot: {exc}", file=sys.stderr)
            self.status = 1
        self.window.close()
        self.app.exit(self.status)


def _placeholder(args):
    """A small window saying that diffgui is starting (not for scripted screenshots)."""
    if args.screenshot:
        return None
    label = QtWidgets.QLabel("<h2>diffgui</h2><p>starting: loading the subtraction engine…</p>")
    label.setWindowTitle("diffgui")
    label.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
    label.setMinimumSize(420, 160)
    label.show()
    QtWidgets.QApplication.processEvents()
    return label


def run_app(args) -> int:
    """Open the main window as asked by ``args``; returns the exit status."""
    app = get_app()
    splash = _placeholder(args)  # shown at once, while the engine and the window are imported
    from .main_window import MainWindow

    settings = None
    if args.screenshot:  # a scripted run must not change (or depend on) the user's layout
        import tempfile

        tmp = tempfile.mkdtemp(prefix="diffgui-settings-")
        settings = QtCore.QSettings(os.path.join(tmp, "diffgui.ini"), QtCore.QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    if getattr(args, "size", None):
        win.resize(*args.size)
    session = ScriptedSession(win, args, app)
    win.show()
    if splash is not None:
        splash.close()
        splash.deleteLater()
    QtCore.QTimer.singleShot(0, session.start)
    status = app.exec()
    return session.status if args.screenshot else status
