"""The cache's own commands: info and verify (registered on the group in cli.py)."""
from __future__ import annotations

import click

from .cli_errors import user_errors
from .store import Cache, CacheError
from .views import describe


@click.command()
@click.argument("cache_path", type=click.Path())
@user_errors
def info(cache_path):
    """Summarise a cache: model, settings, rows, labels, and whether it is complete.

    \b
    Example:
      python cli.py info ph.zarr
    """
    try:
        click.echo(describe(cache_path))
    except CacheError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@click.argument("cache_path", type=click.Path())
@user_errors
def verify(cache_path):
    """Check every chunk of a cache: missing or corrupt data, and whether it is complete.

    Exits non-zero when anything is wrong, and says how to repair: rerun the embed command
    that made the cache; it recomputes damaged chunks and mends the row metadata.

    \b
    Example:
      python cli.py verify ph.zarr
    """
    try:
        problems = Cache.open(cache_path, check=False).verify()
    except CacheError as exc:
        raise click.ClickException(str(exc)) from exc
    if not problems:
        click.echo(f"{cache_path}: every chunk present and its checksum correct; complete")
        return
    for line in problems:
        click.echo(f"{cache_path}: {line}", err=True)
    raise click.ClickException(f"{cache_path} has {len(problems)} problem(s); repair: rerun the "
                               "embed command that made it (same --out and settings)")


def register(group: click.Group):
    group.add_command(info)
    group.add_command(verify)
