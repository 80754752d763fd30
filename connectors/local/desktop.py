"""One lab's desktop as a shell supervisor: Xvfb, a window manager, the lab's app and x11vnc.

A single `sh` starts them all so they share its process group, which is how the connector suspends,
resumes and deletes the lab as a whole. The clients start once the X socket exists. When x11vnc ends for
any reason the supervisor takes the whole group down (`kill 0`), so a half-dead desktop shows as gone
rather than pending for ever.

The environment is built from scratch: the worker's own (database URL, secret keys) must not reach a
learner's shell. `marker` tags every process of the desktop so /proc can tell it from strangers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

GEOMETRY = "1280x800x24"
MARKER_VAR = "LABDESK_LAB_DIR"

SCRIPT = r"""
d=":$LABDESK_DISPLAY"
"$LABDESK_XVFB" "$d" -screen 0 "$LABDESK_GEOMETRY" -nolisten tcp -auth "$XAUTHORITY" &
xvfb=$!
tries=0
until [ -S "/tmp/.X11-unix/X$LABDESK_DISPLAY" ]; do
  tries=$((tries + 1))
  if [ "$tries" -gt 300 ] || ! kill -0 "$xvfb" 2>/dev/null; then kill 0; fi
  sleep 0.1
done
export DISPLAY="$d"
if [ -n "$LABDESK_WM" ]; then "$LABDESK_WM" & fi
if [ -n "$LABDESK_COMMAND" ]; then sh -c "$LABDESK_COMMAND" & fi
"$LABDESK_X11VNC" -display "$d" -rfbport "$LABDESK_PORT" -localhost -passwdfile "$LABDESK_PASSWORD_FILE" \
  -forever -shared -noxdamage -quiet
kill 0
"""


def marker(lab_dir: Path) -> str:
    """The environment entry every process of this lab's desktop carries."""
    return f"{MARKER_VAR}={lab_dir}"


@dataclass(frozen=True)
class Desktop:
    """What one lab's desktop runs with: its display, VNC port, programs and files."""

    lab_dir: Path
    display: int
    port: int
    xvfb: str
    x11vnc: str
    window_manager: str = ""
    command: str = ""

    @property
    def password_file(self) -> Path:
        """x11vnc's -passwdfile: the VNC password, mode 0600."""
        return self.lab_dir / "vncpasswd"

    @property
    def xauthority(self) -> Path:
        """The X cookie shared by Xvfb and its clients, mode 0600."""
        return self.lab_dir / "Xauthority"

    @property
    def log(self) -> Path:
        """Where the desktop's programs write, for whoever debugs a lab that never gets ready."""
        return self.lab_dir / "desktop.log"

    def argv(self) -> list[str]:
        """The supervisor's command line; its $0 names the lab in `ps`."""
        return ["sh", "-c", SCRIPT, f"labdesk-desktop-{self.display}"]

    def env(self) -> dict[str, str]:
        """The supervisor's whole environment: only what the desktop needs, nothing of the worker's."""
        return {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(self.lab_dir),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "XAUTHORITY": str(self.xauthority),
            MARKER_VAR: str(self.lab_dir),
            "LABDESK_DISPLAY": str(self.display),
            "LABDESK_PORT": str(self.port),
            "LABDESK_GEOMETRY": GEOMETRY,
            "LABDESK_PASSWORD_FILE": str(self.password_file),
            "LABDESK_XVFB": self.xvfb,
            "LABDESK_X11VNC": self.x11vnc,
            "LABDESK_WM": self.window_manager,
            "LABDESK_COMMAND": self.command,
        }
