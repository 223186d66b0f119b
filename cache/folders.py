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
from .safe_io import read_json, refuse_links, write_text

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
        return read_json(path / "zarr.json").get("attributes", {}).get("format") == FORMAT
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
    if path.exists():
        refuse_links(path)  # a link inside could send the lock's or a chunk's write anywhere
    made = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    if not (path / MARKER).exists() and not os.listdir(path):
        write_text(path / MARKER, json.dumps({"tool": "hyena-embed", "kind": "cache"}) + "\n")
    return made


def remove_if_bare(path: Path):
    """Remove a folder holding only our marker and lock (a run that failed before writing)."""
    path = Path(path)
    if path.is_dir() and set(os.listdir(path)) <= {MARKER, LOCK}:
        shutil.rmtree(path)


def foreign_files(path: Path) -> list[str]:
    """Files under a cache folder that the store never writes (anything but metadata, chunk
    files under an array's `c/`, the marker and the lock), as paths relative to it."""
    found = []
    for root, _, files in os.walk(path):
        rel = Path(root).relative_to(path).parts
        for name in files:
            parts = (*rel, name)
            chunk = "c" in parts[:-1] and all(p.isdigit() for p in parts[parts.index("c") + 1:])
            temporary = name.startswith(".") and name.endswith(".tmp")  # safe_io's, cut off
            if not (name == "zarr.json" or chunk or temporary or parts in ((MARKER,), (LOCK,))):
                found.append("/".join(parts))
    return sorted(found)


def claim_folder(path: Path):
    """Make `path` an empty folder of ours: create it, or clear what this tool wrote there
    (never anything else; the lock file stays), then write the marker first. A folder holding
    any file the store never writes is refused before anything is deleted."""
    check_out_folder(path)
    path.mkdir(parents=True, exist_ok=True)
    refuse_links(path)
    foreign = foreign_files(path)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise FolderError(f"{path} holds files hyena-embed did not write ({shown}); it deletes "
                          "only its own: move them out of the folder, or choose another --out")
    for name in os.listdir(path):
        if name in (LOCK,):
            continue
        target = path / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    write_text(path / MARKER, json.dumps({"tool": "hyena-embed", "kind": "cache"}) + "\n")




def separate(out: str | Path, *inputs: str | Path | None):
    """Refuse an --out inside an input folder or holding an input: a run would read its own
    output, or write among the files it reads."""
    target = Path(out).resolve()
    for given in inputs:
        if given is None or not Path(given).exists():
            continue
        source = Path(given).resolve()
        if target == source or target.is_relative_to(source) and source.is_dir() \
                or source.is_relative_to(target):
            raise FolderError(f"--out {out} and the input {given} overlap (one holds the "
                              "other): the run would read what it writes. Choose an --out "
                              "outside the input's folder")
