"""LTI Dynamic Registration and the Canvas JSON configuration."""

from flask import Blueprint

registration = Blueprint("registration", __name__)
