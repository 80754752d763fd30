"""A log of the service requests the emulator answered (token, grades, roster), so a test can see what
the tool asked for and what it got: `store.service_log(rt)`."""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

from flask import Response, g, request
from redis.exceptions import RedisError

from lti.emulator import site, store
from lti.emulator.blueprint import emulator

log = logging.getLogger(__name__)

View = TypeVar("View", bound=Callable[..., object])
_LOGGED: set[str] = set()


def logged(view: View) -> View:
    """Mark a view as a service endpoint whose requests are logged (errors included)."""
    _LOGGED.add(f"{emulator.name}.{view.__name__}")
    return view


@emulator.after_request
def _record(response: Response) -> Response:
    if request.endpoint not in _LOGGED:
        return response
    entry = {"method": request.method, "path": request.path, "query": request.query_string.decode(),
             "status": response.status_code, "scopes": getattr(g, "emulator_scopes", [])}
    try:
        store.log_request(site.current_rt(), entry)
    except RedisError as exc:  # the log is a convenience; it must never change the answer
        log.warning("emulator request log not written: %s", exc)
    return response
