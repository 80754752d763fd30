"""Errors shared by the broker and every connector.

Connectors raise exactly these four kinds so that the broker can decide, without knowing the backend,
whether to retry, try elsewhere, give up politely, or fail the lab with a message a learner can read.
"""

from __future__ import annotations


class LabDeskError(Exception):
    """Base of every error LabDesk raises on purpose."""


class ConnectorError(LabDeskError):
    """A connector could not do what was asked. `user_message` is safe to show to a learner."""

    def __init__(self, message: str, user_message: str | None = None) -> None:
        super().__init__(message)
        self.user_message = user_message or message


class TransientError(ConnectorError):
    """A passing fault (timeout, 503, lock held): the same call may succeed later; retry with back-off."""


class CapacityError(ConnectorError):
    """The backend is full right now (quota, no free host or GPU): wait or try another backend."""


class Unsupported(ConnectorError):
    """The backend cannot do this at all (for example suspend on a backend without it)."""


class PermanentError(ConnectorError):
    """Retrying cannot help (bad image, rejected template): the lab fails with `user_message`."""


class ConfigError(LabDeskError):
    """The settings are invalid; the message names the key and the reason."""


class UnknownBackend(LabDeskError):
    """No backend, or no connector class, is registered under that name."""


class InvalidTransition(LabDeskError):
    """A lab cannot move from its current state to the requested one."""


class ServiceUnavailable(LabDeskError):
    """A dependency the request needs (Redis, the database) is down; nothing was changed."""
