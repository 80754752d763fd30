"""Browser libraries installed from npm (package.json, package-lock.json), served as static assets.

`npm ci` puts guacamole-common-js into node_modules/; its CommonJS build ends with
`module.exports = Guacamole;`, so it is served wrapped in a function that gives it a `module` and hands
the result to `window.Guacamole`: a plain <script> tag then defines `Guacamole` and nothing else. The
wrapped file is built once per process and kept in memory; browsers revalidate it by its ETag.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

from flask import Blueprint, Response, request

ROOT = Path(__file__).resolve().parents[1]
GUACAMOLE_JS = ROOT / "node_modules" / "guacamole-common-js" / "dist" / "cjs" / "guacamole-common.min.js"
PREFIX = "(function () {\nvar module = { exports: {} };\n"
SUFFIX = "\n;window.Guacamole = module.exports;\n})();\n"
MISSING = (
    "guacamole-common-js is not installed: run `npm ci` in the LabDesk directory "
    "(scripts/demo and scripts/test do it for you).\n"
)

vendor = Blueprint("vendor", __name__)


@dataclass(frozen=True)
class Asset:
    body: bytes
    etag: str


_cache: dict[Path, Asset] = {}
_lock = threading.Lock()


def load(path: Path) -> Asset | None:
    """The wrapped script, read once; None while the npm package is not installed (checked again next time)."""
    asset = _cache.get(path)
    if asset is not None:
        return asset
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    body = (PREFIX + source + SUFFIX).encode()
    asset = Asset(body, hashlib.sha256(body).hexdigest()[:32])
    with _lock:
        _cache[path] = asset
    return asset


@vendor.get("/static/vendor/guacamole-common.js")
def guacamole_common():  # type: ignore[no-untyped-def]
    asset = load(GUACAMOLE_JS)
    if asset is None:
        return Response(MISSING, status=503, mimetype="text/plain", headers={"Retry-After": "60"})
    headers = {"ETag": f'"{asset.etag}"', "Cache-Control": "public, max-age=3600"}
    if asset.etag in request.if_none_match:
        return Response(status=304, headers=headers)
    return Response(asset.body, mimetype="text/javascript", headers=headers)
