"""The preview window, and deciding whether one can be shown at all.

OpenCV's Qt backend aborts the whole process (no exception) when it cannot reach a display, so on
Linux the X server named by $DISPLAY is probed with a plain socket before any window is created, and
a Wayland-only session is probed in a child process. Without a display the program runs headless.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import cv2
import numpy as np

logger = logging.getLogger(__name__)

QUIT_KEYS = {ord("q"), ord("Q"), 27}  # q, Esc
MAX_INITIAL_SIZE = (1280, 800)  # a larger frame opens scaled down (the window can be resized)


def _x_server_answers(display: str) -> bool:
    """Whether an X server accepts connections at ``display`` ("[host]:N[.S]")."""
    host, _, rest = display.rpartition(":")
    number = rest.split(".")[0]
    if not number.isdigit():
        return False
    if host and host != "unix" and not host.startswith("/"):
        try:
            with socket.create_connection((host, 6000 + int(number)), timeout=2):
                return True
        except OSError:
            return False
    path = host if host.startswith("/") else f"/tmp/.X11-unix/X{number}"
    for address in (path, "\0" + path):  # Linux also has abstract sockets
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            try:
                sock.connect(address)
                return True
            except OSError:
                continue
    return False


def _window_opens_in_child() -> bool:
    code = "import cv2; cv2.namedWindow('probe'); cv2.waitKey(1); cv2.destroyAllWindows()"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=20,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def display_available() -> tuple[bool, str]:
    """(True, "") when a window can be shown, else (False, why not)."""
    if not sys.platform.startswith("linux"):
        return True, ""  # Windows and macOS always have a desktop; a failure shows at window creation
    x11 = os.environ.get("DISPLAY", "")
    if x11:
        if _x_server_answers(x11):
            return True, ""
        return False, f"the X display {x11} does not answer"
    if os.environ.get("WAYLAND_DISPLAY"):
        if _window_opens_in_child():
            return True, ""
        return False, "OpenCV cannot open a window on this Wayland session (no X server)"
    return False, "no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"


class Window:
    """One OpenCV window; ``show`` returns False once the user has asked to quit."""

    def __init__(self, title: str, quiet: bool = True) -> None:
        if quiet:
            # Qt's own chatter (missing font folder, XDG_RUNTIME_DIR...) is not the user's concern.
            os.environ.setdefault("QT_LOGGING_RULES", "*.debug=false;*.info=false;*.warning=false")
        self.title = title
        self._shown = False
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
        except cv2.error as exc:
            raise OSError(f"OpenCV cannot create a window: {str(exc).strip().splitlines()[-1]}") from exc

    def is_open(self) -> bool:
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:  # Qt destroys a window closed by the user; asking about it raises
            return False

    def show(self, image: np.ndarray) -> bool:
        """Draw ``image``; False when the window was closed or q/Esc pressed."""
        if self._shown and not self.is_open():
            return False  # imshow would open the window again
        if not self._shown:
            h, w = image.shape[:2]
            factor = min(1.0, MAX_INITIAL_SIZE[0] / w, MAX_INITIAL_SIZE[1] / h)
            cv2.resizeWindow(self.title, max(1, round(w * factor)), max(1, round(h * factor)))
        cv2.imshow(self.title, image)
        self._shown = True
        key = cv2.waitKey(1)
        return not (key != -1 and key & 0xFF in QUIT_KEYS) and self.is_open()

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)  # lets the GUI backend actually take the window down
        except cv2.error:
            pass
