"""Check definitions: what an image version asks to be checked, and how the results make a score.

An image's normalized spec (`broker.catalogue`, `Image.spec`) carries its checks with their script text
embedded (`checks[i].script`): the file's text for a `run` check, a generated POSIX sh script for a
built-in one (`builtin_script`). So an image version carries its exact checks, and a changed script is a
new version. `checks_of` turns a spec into the definitions a grading run needs; `score_of` is the
weighted pass ratio scaled to the entry's `max_score`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from broker.errors import LabDeskError

DEFAULT_TIMEOUT = 30  # seconds, when a check states none
MAX_TIMEOUT = 600
BUILTINS: dict[str, tuple[str, ...]] = {  # built-in check type -> the keys it takes
    "file-exists": ("path",),
    "file-contains": ("path", "pattern"),
    "command-succeeds": ("command",),
}
# Where `run` paths of image versions imported before scripts were embedded are found (see checks_of).
CATALOGUE_ROOT = Path(__file__).resolve().parent.parent / "desktop-images"


class CheckError(LabDeskError):
    """An image's checks cannot be run as stored; the message says which check and why."""


@dataclass(frozen=True)
class CheckDefinition:
    """One check of an image version, ready to hand to a runner."""

    id: str
    title: str
    weight: float
    host: str  # the lab machine it runs on; "" means the first
    hint: str  # shown when it fails; "" lets the script's stderr speak
    timeout: float
    script: str
    args: tuple[str, ...]


def checks_of(image_spec: Mapping[str, Any] | None, lab_user: str | None = None) -> list[CheckDefinition]:
    """The checks of an image version, in order. `lab_user` (default: the spec's `lab_user.name`) is the
    argument a check gets when its entry states no `args`."""
    spec = image_spec if isinstance(image_spec, Mapping) else {}
    user = lab_user or _lab_user(spec)
    found: list[CheckDefinition] = []
    for item in spec.get("checks") or []:
        if not isinstance(item, Mapping) or not item.get("id"):
            continue
        args = item.get("args")
        found.append(CheckDefinition(
            id=str(item["id"]),
            title=str(item.get("title") or item["id"]),
            weight=float(item.get("weight", 1)),
            host=str(item.get("host") or ""),
            hint=str(item.get("hint") or ""),
            timeout=float(item.get("timeout") or DEFAULT_TIMEOUT),
            script=_script(item, user),
            args=tuple(str(a) for a in args) if isinstance(args, list) else (user,),
        ))
    return found


def max_score_of(image_spec: Mapping[str, Any] | None) -> float:
    """The score the checks are scaled to: the spec's `max_score`, else the sum of the check weights."""
    spec = image_spec if isinstance(image_spec, Mapping) else {}
    stated = spec.get("max_score")
    if isinstance(stated, (int, float)) and not isinstance(stated, bool) and stated > 0:
        return stated
    return sum(check.weight for check in checks_of(spec))


def score_of(results: Iterable[Mapping[str, Any]], max_score: float) -> float:
    """The weighted pass ratio times `max_score`: each result counts its `weight` when its `state` is
    "passed". All passed gives exactly `max_score`; no weight at all gives 0."""
    rows = list(results)
    total = sum(float(row.get("weight", 1)) for row in rows)
    passed = sum(float(row.get("weight", 1)) for row in rows if row.get("state") == "passed")
    if total <= 0 or passed <= 0:
        return 0.0
    if passed >= total:
        return float(max_score)
    return round(passed / total * float(max_score), 6)


def _lab_user(spec: Mapping[str, Any]) -> str:
    lab_user = spec.get("lab_user")
    name = lab_user.get("name") if isinstance(lab_user, Mapping) else None
    return str(name) if name else "learner"


def _script(item: Mapping[str, Any], user: str) -> str:
    """The embedded script; for versions imported before embedding, what they referenced."""
    if item.get("script"):
        return str(item["script"])
    if item.get("builtin") in BUILTINS:
        return builtin_script(str(item["builtin"]), user, **{k: str(item[k]) for k in BUILTINS[item["builtin"]] if k in item})
    run = item.get("run")
    path = CATALOGUE_ROOT / str(run) if run else None
    if path is not None and ".." not in Path(str(run)).parts and path.is_file():
        # Versions imported before scripts were embedded named the file; it is read as they would have.
        return path.read_text(encoding="utf-8")
    raise CheckError(f"check '{item.get('id')}' has no script in this image version; import the catalogue again and move the activity to the newest version")


# -- built-in checks ------------------------------------------------------------------------------------
_PREAMBLE = """#!/bin/sh
# LabDesk built-in check "{kind}", generated from the catalogue entry.
# Runs as the grader account; $1 is the lab user. Exit 0 passes; the first line printed is the feedback.
# shellcheck disable=SC2088  # a "~/" in a message is text for the learner, not a path
user=${{1:-{user}}}
home=$(getent passwd "$user" 2>/dev/null | cut -d: -f6)
home=${{home:-$HOME}}
"""


def builtin_script(kind: str, lab_user: str, path: str = "", pattern: str = "", command: str = "") -> str:
    """The POSIX sh script of a built-in check.

    - `file-exists`: `path` exists (a file or a directory).
    - `file-contains`: `path` is a file with a line matching `pattern` (an extended regular expression,
      `grep -E`).
    - `command-succeeds`: `command` exits 0, run with `sh -c` in the lab user's home directory, with the
      lab user as `$1` and their home in `$LAB_HOME`; on failure its last lines of output go to stderr.

    A relative `path`, or one starting with `~/`, is in the lab user's home directory.
    """
    if kind not in BUILTINS:
        raise CheckError(f"unknown built-in check '{kind}' (expected one of: {', '.join(BUILTINS)})")
    text = _PREAMBLE.format(kind=kind, user=shlex.quote(lab_user))
    say = lambda message: f"printf '%s\\n' {shlex.quote(message)}"  # noqa: E731 - no echo: backslashes stay
    if kind == "command-succeeds":
        return text + f"""LAB_HOME=$home
export LAB_HOME
cd "$home" 2>/dev/null || cd /
output=$(sh -c {shlex.quote(command)} check "$@" 2>&1)
status=$?
if [ "$status" -eq 0 ]; then
  {say("The check command succeeded.")}
  exit 0
fi
printf '%s\\n' "The check command failed (exit status $status)."
printf '%s\\n' "$output" | tail -n 5 >&2
exit 1
"""
    shown = path
    text += f"file={_path_expression(path)}\n"
    if kind == "file-exists":
        return text + f"""if [ -e "$file" ]; then
  {say(f"Found {shown}.")}
else
  {say(f"{shown} does not exist.")}
  exit 1
fi
"""
    return text + f"""if [ ! -f "$file" ]; then
  {say(f"{shown} does not exist.")}
  exit 1
fi
grep -Eq -e {shlex.quote(pattern)} "$file"
status=$?
if [ "$status" -eq 0 ]; then
  {say(f"{shown} has the expected content.")}
elif [ "$status" -eq 1 ]; then
  {say(f"{shown} does not have the expected content yet.")}
  exit 1
else
  {say(f"{shown} could not be read.")}
  exit 1
fi
"""


def _path_expression(path: str) -> str:
    """A shell word for `path`: absolute as given; `~`, `~/x` and relative paths under "$home"."""
    if path.startswith("/"):
        return shlex.quote(path)
    rest = path[1:] if path == "~" or path.startswith("~/") else "/" + path
    rest = rest.lstrip("/")
    return '"$home"' + (f"/{shlex.quote(rest)}" if rest else "")
