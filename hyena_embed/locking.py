"""One writer per output folder: an advisory lock (flock) on a file inside it.

The kernel drops the lock when the process dies, however it dies, so a killed run never leaves
a stale lock behind; the file's text only says who holds it. Under torchrun, rank 0 holds the
lock for the whole run and the other ranks write only after it has been taken.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from cache.errors import UserError
from cache.folders import LOCK
from cache.safe_io import open_nofollow


class LockedError(UserError, RuntimeError):
    """Another process is writing into the same folder."""


@contextmanager
def exclusive(folder: str | Path, name: str = LOCK):
    """Hold the folder's lock for the block; LockedError at once if another process has it."""
    path = Path(folder) / name
    fh = open_nofollow(path)  # a link in the lock's place would redirect its text
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            try:
                who = json.loads(holder)
                text = f"pid {who['pid']} on {who['host']}, since {who['since']}: {who['command']}"
            except (ValueError, KeyError):
                text = "another process"
            raise LockedError(f"{folder} is being written by another run ({text}); wait for it "
                              "to finish, or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "command": " ".join(sys.argv)[:500]}))
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock
