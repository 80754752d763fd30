"""`labdesk grades …`: the score outbox."""

import click


@click.group()
def grades() -> None:
    """Scores on their way to LMS gradebooks."""
