"""The catalogue's Markdown instructions on the lab page: formatted, and never a way to inject markup."""

from __future__ import annotations

from typing import Callable

from broker.models import Image
from broker.runtime import Runtime
from tests.support.http import Learner
from tests.support.world import World
from web.instructions import render

SignIn = Callable[[str], Learner]


def test_markdown_is_formatted_and_raw_html_and_script_links_are_not() -> None:
    html = str(render({"instructions": "# Task\n\n1. Run `ls`\n\n<script>alert(1)</script>\n\n[x](javascript:alert(1)) [docs](https://example.org/d)"}))
    assert "<h1>Task</h1>" in html and "<code>ls</code>" in html and "<ol>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'href="javascript:' not in html and 'href="https://example.org/d"' in html
    assert render({}) is None and render({"instructions": "  "}) is None and render(None) is None


def test_the_lab_page_shows_the_images_instructions(rt: Runtime, world: World, learner: SignIn) -> None:
    with rt.session() as session:
        image = session.query(Image).one()
        image.spec = {"instructions": "Open a terminal and run **make test**."}
        session.commit()
    page = learner("Ada").launch(world.activity_id)
    assert page.status_code == 200
    assert '<details id="instructions"' in page.text and "<strong>make test</strong>" in page.text
