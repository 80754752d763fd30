"""The emulator's one Flask blueprint, which every page and endpoint module adds its routes to.

One blueprint, not one per module: the app treats the emulator as a unit by blueprint name (the CSRF
check exempts `emulator`, whose endpoints other sites post to by design and which carry signed proofs).
"""

from flask import Blueprint

emulator = Blueprint("emulator", __name__, url_prefix="/emulator", template_folder="templates")
