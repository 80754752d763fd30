"""The lab's instructions, written in Markdown in the image catalogue, rendered beside the desktop.

CommonMark through markdown-it-py with raw HTML turned off: a catalogue entry can format text, lists, code
and links, but cannot put script or markup of its own into the learner's page (links to `javascript:` and
the like are refused by markdown-it's link check).
"""

from __future__ import annotations

from typing import Any, Mapping

from markdown_it import MarkdownIt
from markupsafe import Markup

_markdown = MarkdownIt("commonmark", {"html": False})


def render(spec: Mapping[str, Any] | None) -> Markup | None:
    """The HTML of the image's `instructions`, or None when it has none."""
    text = (spec or {}).get("instructions")
    if not isinstance(text, str) or not text.strip():
        return None
    return Markup(_markdown.render(text))
