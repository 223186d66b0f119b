"""`report OUT`: one self-contained HTML page for a run folder of fit-head / finetune.

The page holds, with nothing fetched from elsewhere (plots are inlined as base64 PNG): the
verdict in one sentence, the leaderboard ranked by validation score with test intervals and
differences to the best baseline, each head's plots and settings, the cache the heads were
fitted on, and the exact commands and package versions that produced the folder.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd

from cache.safe_io import append_line, inside, read_bytes, read_json, read_text, write_text

from cache.errors import UserError

from .evaluation import read_board
from .verdict import N_BOOT, is_baseline, main_metric, run_verdict

COMMANDS_FILE = "commands.jsonl"
PACKAGES = ("hyena-embed", "torch", "numpy", "scikit-learn", "lightgbm", "zarr", "pandas")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def log_command(out: str | Path, argv: list[str] | None = None):
    """Append the command that wrote into OUT, with the time and versions (OUT/commands.jsonl)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith("cli.py"):
        argv = ["python", "cli.py", *argv[1:]]
    entry = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
             "command": shlex.join(argv), "cwd": os.getcwd(), "versions": versions()}
    Path(out).mkdir(parents=True, exist_ok=True)
    append_line(Path(out) / COMMANDS_FILE, json.dumps(entry))


def _image(path: Path) -> str:
    data = base64.b64encode(read_bytes(path)).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4f}"
    return html.escape(str(value))


def _table(frame: pd.DataFrame, highlight=None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for i, row in enumerate(frame.itertuples(index=False)):
        cls = ' class="best"' if highlight is not None and highlight(i, row) else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _board_section(board: pd.DataFrame, verdict: dict, task: str) -> str:
    key, words = main_metric(task)
    shown = []
    for row in board.itertuples():
        name = (row.features, row.head)
        interval = verdict["intervals"].get(name)
        diff = verdict["vs_baseline"].get(name)
        shown.append({
            "features": row.features, "head": row.head,
            "kind": "baseline" if is_baseline(*name) else "embedding",
            f"val {words}": getattr(row, f"val_{key}", float("nan")),
            f"test {words} [95% CI]": (f"{interval.estimate:.3f} [{interval.low:.3f}, "
                                       f"{interval.high:.3f}]") if interval else "",
            "test - best baseline [95% CI]": str(diff) if diff else
            ("(the baseline)" if name == verdict.get("baseline") else ""),
            **({"test MAE": row.test_mae} if hasattr(row, "test_mae") else {}),
            "chosen on val": _short(getattr(row, "chosen", "")),
            "fit s": getattr(row, "fit_seconds", float("nan")),
        })
    frame = pd.DataFrame(shown)
    chosen = {verdict.get("model"), verdict.get("baseline")}
    return _table(frame, highlight=lambda i, r: (r.features, r.head) in chosen)


def _short(chosen) -> str:
    """'{"alpha": 464.2}' -> 'alpha=464' (hyperparameters picked on validation)."""
    try:
        values = json.loads(chosen)
    except (TypeError, ValueError):
        return ""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()) \
        if isinstance(values, dict) else ""


def _head_sections(out: Path, board: pd.DataFrame) -> str:
    parts = []
    for row in board.itertuples():
        folder = inside(out, f"{row.features}/{row.head}")
        if not folder.is_dir():
            continue
        config = _config(folder)
        settings = {k: config.get(k) for k in ("task", "labels", "features", "seed", "n", "params",
                                               "chosen", "kmer_variants")
                    if config.get(k) is not None}
        images = "".join(_image(p) for p in sorted(folder.glob("*.png")) if not p.is_symlink())
        parts.append(f'<section><h3 id="{html.escape(row.features)}-{html.escape(row.head)}">'
                     f"{html.escape(row.features)} / {html.escape(row.head)}</h3>"
                     f"<div class=plots>{images or '<p>(no plots: run without --no-plots)</p>'}</div>"
                     f"<details><summary>settings</summary><pre>{html.escape(json.dumps(settings, indent=1, default=str))}</pre>"
                     f"</details></section>")
    return "".join(parts)


def _cache_section(out: Path, board: pd.DataFrame) -> str:
    from cache.store import Cache, CacheError

    seen, parts = set(), []
    for row in board.itertuples():
        config = _config(inside(out, f"{row.features}/{row.head}"))
        if not config:
            continue
        facts = {k: config.get(k) for k in ("cache", "model", "weights_sha256", "random_init",
                                            "layer", "d_model") if k in config}
        key = json.dumps(facts, sort_keys=True, default=str)
        if key in seen or not facts:
            continue
        seen.add(key)
        try:
            facts = Cache.open(config["cache"]).summary() | {"cache": config["cache"]} \
                if config.get("cache") else facts
        except CacheError:
            facts["note"] = "the cache is no longer at this path"
        parts.append(f"<pre>{html.escape(json.dumps(facts, indent=1, default=str))}</pre>")
    return "".join(parts) or "<p>(no cache recorded)</p>"


def _commands_section(out: Path, board: pd.DataFrame) -> str:
    path = out / COMMANDS_FILE
    if not path.exists():
        return "<p>(no commands recorded)</p>"
    entries, damaged = _input_commands(out, board), 0
    for line in read_text(path).splitlines():
        try:
            entry = json.loads(line) if line.strip() else None
        except ValueError:  # a line cut off by a kill: say so, keep the others
            entry = None
        if isinstance(entry, dict) and isinstance(entry.get("versions"), dict):
            entries.append(entry)
        elif line.strip():
            damaged += 1
    rows = "".join(f"<li><code>{html.escape(str(e.get('command')))}</code> <small>"
                   f"{html.escape(str(e.get('time')))}</small></li>" for e in entries)
    latest = entries[-1]["versions"] if entries and entries[-1]["versions"] else versions()
    vers = ", ".join(f"{html.escape(str(k))} {html.escape(str(v))}" for k, v in latest.items())
    note = f"<p>({damaged} damaged line(s) of {COMMANDS_FILE} left out)</p>" if damaged else ""
    return f"<ol>{rows}</ol>{note}<p>Versions (latest run): {vers}</p>"


def _input_commands(out: Path, board: pd.DataFrame) -> list[dict]:
    """The embed commands that made the caches this run's heads read (listed first)."""
    from cache.store import Cache

    found, seen = [], set()
    for row in board.itertuples():
        try:
            cache_path = _config(inside(out, f"{row.features}/{row.head}")).get("cache")
            if not isinstance(cache_path, str) or cache_path in seen:
                continue
            seen.add(cache_path)
            attrs = Cache.open(cache_path).attrs
        except (UserError, OSError):
            continue
        if attrs.get("command"):
            found.append({"command": attrs["command"], "time": f"{attrs.get('created')} (made {cache_path})",
                          "versions": {}})
    return found


def _split_sizes(out: Path, board: pd.DataFrame) -> str:
    """The split every row is scored on (one board holds one split): its sizes."""
    for row in board.itertuples():
        n = _config(inside(out, f"{row.features}/{row.head}")).get("n")
        if isinstance(n, dict):
            return (f"<p>Split: train {_fmt(n.get('train'))}, validation {_fmt(n.get('val'))}, "
                    f"test {_fmt(n.get('test'))} rows.</p>")
    return ""


def _config(folder: Path) -> dict:
    """A head folder's config.json ({} when it has none); a damaged one is an error naming it."""
    path = folder / "config.json"
    return read_json(path) if path.exists() or path.is_symlink() else {}


STYLE = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:left}th{background:#f3f3f3}tr.best td{background:#eef6ee}
.verdict{font-size:1.1em;background:#f6f6fb;border-left:4px solid #557;padding:.6em 1em}
.warn{background:#fff3cd;border-left:4px solid #e0a800;padding:.6em 1em}
.plots{display:flex;flex-wrap:wrap;gap:.4em;align-items:flex-start}
.plots img{height:300px;width:auto;max-width:100%;border:1px solid #eee}pre{background:#fafafa;padding:.5em;
overflow-x:auto;font-size:.85em}code{font-size:.9em}
"""


def write_report(out: str | Path) -> Path:
    """Write OUT/report.html and return its path."""
    out = Path(out)
    board_path = out / "leaderboard.csv"
    if not board_path.exists():
        raise FileNotFoundError(f"{out} has no leaderboard.csv: point report at a folder written "
                                "by fit-head or finetune (their --out)")
    board = read_board(board_path)
    task = "regression" if any(c.startswith("val_mae") for c in board.columns) else "classification"
    key, words = main_metric(task)
    if f"val_{key}" in board:
        board = board.sort_values(f"val_{key}", ascending=False, na_position="last")
    verdict = run_verdict(out, board, task)
    sentence = verdict["sentence"] or ("no baseline in this folder: rerun fit-head with "
                                       "--baseline kmer to see whether the embeddings help")
    random_init = any(_config(inside(out, f"{r.features}/{r.head}")).get("random_init")
                      for r in board.itertuples())
    warning = ('<p class="warn">These heads were fitted on embeddings of a model with RANDOM '
               "weights: the numbers say nothing about the pretrained model.</p>") if random_init else ""
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>hyena-embed report: {html.escape(out.name)}</title><style>{STYLE}</style></head><body>
<h1>hyena-embed report: {html.escape(str(out))}</h1>
<p><small>written {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}; {task};
rows ranked by validation {words} (test scores are shown, never used to choose).</small></p>
{warning}<p class="verdict">{html.escape(sentence)}</p>
<h2>Leaderboard</h2>{_split_sizes(out, board)}{_board_section(board, verdict, task)}
<p><small>Intervals: 95% paired bootstrap over test samples ({N_BOOT} resamples). Highlighted: the
best embedding head and the best baseline on validation.</small></p>
<h2>Heads</h2>{_head_sections(out, board)}
<h2>Cache</h2>{_cache_section(out, board)}
<h2>Commands and versions</h2>{_commands_section(out, board)}
</body></html>"""
    path = out / "report.html"
    write_text(path, page)
    return path
