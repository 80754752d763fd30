"""`labdesk platforms …` and `labdesk keys …`."""

import click


@click.group()
def platforms() -> None:
    """LMS platforms that may launch LabDesk."""


@click.group()
def keys() -> None:
    """LabDesk's LTI signing keys."""
