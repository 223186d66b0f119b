"""Reading and writing files in folders a user hands us, so that a crafted folder cannot
redirect a write, feed an unbounded read, or leave a half-written file behind.

- Writes go to a new temporary file beside the target (created with O_EXCL | O_NOFOLLOW) and
  are renamed over it: a reader sees the old file or the new one, never a cut-off one, and a
  target that is a symbolic link is replaced as a link, never written through.
- Appends (the command log) open with O_NOFOLLOW: a link in its place is an error.
- Reads of metadata (JSON, small tables) refuse links and anything that is not a plain file,
  and read at most a bounded number of bytes: /dev/zero or a 10 GB "config" is an error.
- `refuse_links` walks a folder the tool owns before a run writes into it.
"""
from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

from .errors import UserError

METADATA_LIMIT = 64 << 20  # no JSON or CSV this tool writes as metadata comes near 64 MiB


class UnsafePathError(UserError, ValueError):
    """A link, a special file or an oversized file where this tool reads or writes its own."""


class DamagedFileError(UserError, ValueError):
    """A file this tool wrote that no longer parses; the message names it."""


def _refuse_special(path: Path, what: str = "file"):
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePathError(f"{path} is a symbolic link; hyena-embed never reads or writes its "
                              f"own {what}s through links: remove the link and rerun")
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePathError(f"{path} is not a plain file; remove it and rerun")
    return info


def read_bytes(path: str | Path, limit: int = METADATA_LIMIT) -> bytes:
    """The bytes of a plain file (no link, no device), refusing one larger than `limit`."""
    path = Path(path)
    info = _refuse_special(path)
    if info is None:
        raise FileNotFoundError(f"{path}: no such file")
    if info.st_size > limit:
        raise UnsafePathError(f"{path} is {info.st_size:,} bytes, more than the {limit:,} this "
                              "tool ever writes there; it is not one of its files")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UnsafePathError(f"{path} grew past {limit:,} bytes while being read; refusing it")
    return data


def read_text(path: str | Path, limit: int = METADATA_LIMIT) -> str:
    try:
        return read_bytes(path, limit).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DamagedFileError(f"{path} is damaged (not UTF-8 text: {exc.reason})") from None


def read_json(path: str | Path, limit: int = METADATA_LIMIT, kind: type | None = dict):
    """Parsed JSON of a metadata file; DamagedFileError names the file when it does not parse
    or (with `kind`) is not the expected type."""
    text = read_text(path, limit)
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise DamagedFileError(f"{path} is damaged (not JSON: {detail}); it cannot be "
                               "used as it is") from None
    if kind is not None and not isinstance(value, kind):
        raise DamagedFileError(f"{path} is damaged: it holds a JSON {type(value).__name__}, "
                               f"not the {kind.__name__} this tool writes there")
    return value


def read_csv(path: str | Path, limit: int = METADATA_LIMIT, **kwargs):
    """A pandas table from a bounded, link-free file; DamagedFileError names a cut-off one."""
    import pandas as pd

    data = read_bytes(path, limit)
    try:
        return pd.read_csv(io.BytesIO(data), **kwargs)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DamagedFileError(f"{path} is damaged ({str(exc).splitlines()[0]})") from None


def write_bytes(path: str | Path, data: bytes):
    """Replace `path` with `data` atomically; a link at `path` is replaced, never followed."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise UnsafePathError(f"{path} is a folder where this tool writes a file; move it away")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str):
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value, **kwargs):
    write_text(path, json.dumps(value, indent=2, **kwargs))


def write_csv(table, path: str | Path, **kwargs):
    """A pandas table written atomically (see write_bytes)."""
    write_text(path, table.to_csv(index=False, **kwargs))


def save_figure(fig, path: str | Path, **kwargs):
    """A matplotlib figure written atomically (see write_bytes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    write_bytes(path, buffer.getvalue())


def append_line(path: str | Path, line: str):
    """Append one line; a link in the file's place is refused, never followed."""
    path = Path(path)
    _refuse_special(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "a") as fh:
        fh.write(line.rstrip("\n") + "\n")


def open_nofollow(path: str | Path, flags: int = os.O_RDWR | os.O_CREAT):
    """A file object (text, read/write) on `path`, refusing a link or special file there."""
    path = Path(path)
    _refuse_special(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == getattr(os, "ELOOP", 40):
            raise UnsafePathError(f"{path} is a symbolic link; remove it and rerun") from None
        raise
    return os.fdopen(fd, "r+")


def refuse_links(folder: str | Path, limit: int = 5):
    """UnsafePathError naming the links inside `folder` (a folder this tool owns and is about to
    write into): a link there could send a write to a user's file anywhere."""
    folder = Path(folder)
    if folder.is_symlink():
        raise UnsafePathError(f"{folder} is a symbolic link; give the real folder")
    found = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            if os.path.islink(os.path.join(root, name)):
                found.append(os.path.relpath(os.path.join(root, name), folder))
        if len(found) >= limit:
            break
    if found:
        raise UnsafePathError(f"{folder} holds symbolic links ({', '.join(sorted(found)[:limit])}); "
                              "hyena-embed never writes through links in its folders: remove "
                              "them and rerun")


def inside(folder: str | Path, relative: str) -> Path:
    """`folder/relative` for a path read from the folder's own files: it must stay inside the
    folder ('..', absolute paths and links refused), as a crafted file may say anything."""
    folder = Path(folder)
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise UnsafePathError(f"{folder}: {relative!r} is not a path inside the folder")
    parts = Path(relative).parts
    if Path(relative).is_absolute() or ".." in parts:
        raise UnsafePathError(f"{folder}: {relative!r} leaves the folder; refusing it")
    path = folder
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise UnsafePathError(f"{path} is a symbolic link; refusing to follow it")
    return path
