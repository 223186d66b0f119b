"""Errors of stage two that several of its modules raise (each is a UserError: the command
line prints its message as one line)."""
from cache.errors import UserError


class FinetuneError(UserError, RuntimeError):
    """The run cannot go on (diverged, a checkpoint of other settings, or options that
    contradict each other)."""
