"""guacamole-common-js as the lab page loads it: from npm's node_modules, wrapped so a plain <script>
defines `window.Guacamole`, cached, and a readable 503 when `npm ci` was not run."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

from web import vendor


@pytest.fixture
def client():  # type: ignore[no-untyped-def]
    app = Flask("web", static_folder=str(Path(vendor.__file__).parent / "static"))
    app.register_blueprint(vendor.vendor)
    return app.test_client()


def test_the_npm_build_is_served_as_a_script_that_defines_guacamole(client) -> None:  # type: ignore[no-untyped-def]
    if not vendor.GUACAMOLE_JS.exists():
        pytest.skip("node_modules is missing: run npm ci (scripts/test does)")
    response = client.get("/static/vendor/guacamole-common.js")
    assert response.status_code == 200 and response.mimetype == "text/javascript"
    body = response.get_data(as_text=True)
    assert body.startswith(vendor.PREFIX) and body.endswith(vendor.SUFFIX)
    assert "module.exports=Guacamole" in body.replace(" ", "")
    again = client.get("/static/vendor/guacamole-common.js", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304
    assert client.get("/static/labdesk.css").status_code == 200, "the app's own static files are untouched"


def test_a_missing_npm_install_says_what_to_run(client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(vendor, "GUACAMOLE_JS", tmp_path / "absent.js")
    response = client.get("/static/vendor/guacamole-common.js")
    assert response.status_code == 503
    assert "run `npm ci`" in response.get_data(as_text=True)
