"""Deep linking: the instructor's lab picker and the signed response back to the platform."""

from flask import Blueprint

deep_linking = Blueprint("deep_linking", __name__)
