"""OIDC login initiation, the launch, and the JWKS."""

from flask import Blueprint

launch_pages = Blueprint("lti", __name__)
