"""Validating a backend's settings: the checks every connector's config parser shares.

Each raises ConfigError naming the key at fault (`at`) and what was expected, so an admin's typo is
refused before anything is stored (`labdesk backends add`), with the fix in the message.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Mapping

from broker.errors import ConfigError


def port_range(raw: Any, at: str) -> tuple[int, int]:
    ok = isinstance(raw, (list, tuple)) and len(raw) == 2 and all(
        isinstance(port, int) and not isinstance(port, bool) and 1024 <= port <= 65535 for port in raw)
    if not ok or raw[0] > raw[1]:
        raise ConfigError(f"{at}: expected [first, last] with 1024 <= first <= last <= 65535, got {raw!r}")
    return (raw[0], raw[1])


def seed(raw: Any, require: bool, where: str) -> str | None:
    if raw is None and not require:
        return None
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{where}: the secret credential_seed is missing (labdesk backends add generates one)")
    return raw



def known(raw: Mapping[str, Any], allowed: tuple[str, ...], at: str) -> None:
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f'did you mean "{close[0]}"?' if close else f"known: {', '.join(allowed)}"
            raise ConfigError(f"{at}: {key}: unknown key ({hint})")


def unique(values: list[str], at: str, key: str) -> None:
    for index, value in enumerate(values):
        if value in values[:index]:
            raise ConfigError(f"{at}[{index}]: {key}: {value!r} repeats hosts[{values.index(value)}]")


def text(raw: Any, pattern: re.Pattern[str], at: str, what: str) -> str:
    if not isinstance(raw, str) or not pattern.match(raw):
        raise ConfigError(f"{at}: expected {what}, got {raw!r}")
    return raw


def choice(raw: Any, choices: tuple[str, ...], at: str) -> str:
    if raw not in choices:
        raise ConfigError(f"{at}: expected one of {', '.join(choices)}, got {raw!r}")
    return str(raw)


def whole(raw: Any, low: int, at: str, what: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < low:
        raise ConfigError(f"{at}: expected a whole number >= {low} ({what}), got {raw!r}")
    return raw


def flag(raw: Any, at: str) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(f"{at}: expected true or false, got {raw!r}")
    return raw


def seconds(raw: Any, at: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 < raw <= 86_400:
        raise ConfigError(f"{at}: expected a number of seconds above 0 (at most 86400), got {raw!r}")
    return float(raw)
