"""An --out folder of heads (fit-head, finetune, score-variants --board): one writer at a time,
and what a run leaves when it ends (the command log, the board's intervals and verdict)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from cache.folders import remove_if_bare
from cache.safe_io import refuse_links
from hyena_embed.distributed import launched_rank
from hyena_embed.locking import exclusive


@contextmanager
def one_writer(out):
    """One run writes into an --out folder at a time (as embed's caches): its leaderboard and
    head folders are read, merged and rewritten. Under torchrun rank 0 holds the lock for
    all ranks (the others do not write). A folder made here by a run refused before it
    wrote anything is removed again."""
    made = not Path(out).exists()
    Path(out).mkdir(parents=True, exist_ok=True)
    refuse_links(out)  # a link inside OUT could send a head's or the board's write anywhere
    if launched_rank() != 0:
        yield
        return
    try:
        with exclusive(out):
            yield
    except BaseException:
        if made:
            remove_if_bare(out)
        raise


def finish_run(out, board: pd.DataFrame, task: str) -> str | None:
    """Log the command into OUT and add the intervals to its board; returns the verdict sentence."""
    from .report import log_command
    from .verdict import annotate_board

    log_command(out)
    return annotate_board(out, board, task)["sentence"]
