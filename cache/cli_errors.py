"""Where a library error becomes what the command line prints: one line and exit 1.

Every command of every stage is wrapped in `user_errors`; it lives in the lowest package
so that the cache's own commands (info, verify) use it too."""
from __future__ import annotations

import errno
import functools
import os

import click

from .errors import UserError


def user_errors(func):
    """Errors the user can act on (UserError, ValueError from argument checks, a full or
    read-only disk) end the command with their message on one line and exit 1."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (UserError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            raise click.ClickException(os_error_message(exc)) from exc
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug, or damage no check foresaw: still one line
            if os.environ.get("HYENA_EMBED_DEBUG"):
                raise
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''} "
                "(a damaged input this version does not recognise, or a bug: rerun with "
                "HYENA_EMBED_DEBUG=1 for the traceback and report it)") from exc
    return wrapper


def os_error_message(exc: OSError, where=None) -> str:
    where = exc.filename or where or "output"
    if exc.errno == errno.ENOSPC:
        return (f"disk full while writing {where}: free some space, then run the same command "
                "again; it resumes where it stopped")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where}: {exc.strerror}; choose an --out you can write to"
    return f"{where}: {exc.strerror or exc}"
