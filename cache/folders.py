"""Output folders this tool owns: a marker file written first, nothing else ever deleted.

A cache folder holds a marker (`.hyena-embed`) from its first moment, so a folder killed while
being created is recognised as ours and started again; `--overwrite` clears only a folder that
holds nothing but what this tool writes (OWN_NAMES), never the current folder or one above it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .errors import UserError

FORMAT = "hyena-embed-cache"  # the format attribute of a cache's root group
MARKER = ".hyena-embed"  # written first into every cache folder this tool creates
LOCK = ".hyena-embed.lock"  # one writer at a time (hyena_embed.locking)
# every top-level name a cache folder can hold: anything else is a user's file, never deleted
OWN_NAMES = {MARKER, LOCK, "zarr.json", "ids", "group", "pack", "n_tokens", "n_truncated",
             "sequences", "labels", "pooled", "positions", "site_token", "pairs", "progress"}


class FolderError(UserError, ValueError):
    """An --out folder this tool must not write into; the message says what to do."""


def owns(path: Path) -> bool:
    """Whether this tool made the folder: its marker, or (older caches) a cache's zarr.json."""
    if (path / MARKER).exists():
        return True
    try:
        return json.loads((path / "zarr.json").read_text()).get("attributes", {}).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_out_folder(path: Path):
    """Refuse an --out this tool must not write into: a file, the current folder or one
    above it, or a folder holding files it did not make."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FolderError(f"--out {path} is a file; give a folder name for the cache")
    here = Path.cwd().resolve()
    if path.exists() and (path.resolve() == here or path.resolve() in here.parents):
        raise FolderError(f"--out {path} is the current folder or holds it; give a new folder "
                         "name for the cache, e.g. data.zarr")
    if path.is_dir():
        foreign = sorted(set(os.listdir(path)) - OWN_NAMES)
        if foreign or (os.listdir(path) and not owns(path)):
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise FolderError(f"{path} holds files hyena-embed did not make ({shown or 'no marker'}); "
                             "it never deletes or mixes into them: choose another --out")


def prepare_out(path: Path) -> bool:
    """Before a run takes the folder's lock: refuse a folder that is not ours, and make a new
    one ours at once (marker first), so a kill at any later moment leaves a folder we own.
    Returns whether the folder was made now."""
    path = Path(path)
    check_out_folder(path)
    made = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    if not (path / MARKER).exists() and not os.listdir(path):
        (path / MARKER).write_text(json.dumps({"tool": "hyena-embed", "kind": "cache"}) + "\n")
    return made


def remove_if_bare(path: Path):
    """Remove a folder holding only our marker and lock (a run that failed before writing)."""
    path = Path(path)
    if path.is_dir() and set(os.listdir(path)) <= {MARKER, LOCK}:
        shutil.rmtree(path)


def claim_folder(path: Path):
    """Make `path` an empty folder of ours: create it, or clear what this tool wrote there
    (never anything else; the lock file stays), then write the marker first."""
    check_out_folder(path)
    path.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(path):
        if name in (LOCK,):
            continue
        target = path / name
        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    (path / MARKER).write_text(json.dumps({"tool": "hyena-embed", "kind": "cache"}) + "\n")


