"""What every ``espbridge`` command shares: the settings (read once, at the edge) and how results print."""

from __future__ import annotations

import json
from typing import Any

import click

from connector import settings


class Context:
    def __init__(self) -> None:
        try:
            self.settings = settings.load()
        except settings.ConfigurationError as exc:  # "Error: invalid configuration: ESPBRIDGE_…", exit status 1
            raise click.ClickException(str(exc)) from None


pass_context = click.make_pass_decorator(Context, ensure=True)


def emit(data: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    """Print ``data`` as JSON with ``--json``, else the human-readable ``lines``."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        for line in lines:
            click.echo(line)
