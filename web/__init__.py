"""The browser- and script-facing HTTP surface: pages, the JSON API, keepalive, health and metrics.

Flask lives here and in `lti/`, never in `broker/`; `app.create_app` wires the blueprints to a runtime.
"""
