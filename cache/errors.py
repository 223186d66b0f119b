"""The base of every error a user can act on. The command line prints such an error's message
as one line and exits 1 (`hyena_embed.cli_options.user_errors`); a traceback means a bug.
It lives in the lowest package so that every layer can raise it."""


class UserError(Exception):
    """Bad input, a refused run, a damaged file: the message says what to do."""
