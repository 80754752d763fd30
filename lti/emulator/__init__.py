"""The built-in LMS emulator (development and demo only): a real LTI 1.3 platform on the same server."""

from flask import Blueprint

emulator = Blueprint("emulator", __name__, url_prefix="/emulator")


def register_with_tool(rt) -> None:  # type: ignore[no-untyped-def]
    """Register the emulator as a platform of this LabDesk (filled in by the emulator work)."""
