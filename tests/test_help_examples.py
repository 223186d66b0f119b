"""Every example in every command's --help runs as written, in order, on a copy of the shipped
examples/ (the hub is out of reach, so `--model small-32k` runs as `--model tiny-1k
--random-init`: the same commands and files, random weights)."""
import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import cli
from conftest import REPO

ORDER = ["models", "show-model", "embed", "info", "verify", "fit-head", "finetune", "predict",
         "score-variants", "report"]
OFFLINE_MODEL = ("--model small-32k", "--model tiny-1k --random-init")
IN_ORDER = {"finetune"}  # commands whose examples read what an earlier one of them wrote


def help_examples(name: str) -> list[str]:
    """The `python cli.py ...` lines of a command's help text, continuation lines joined."""
    text = cli.main.commands[name].help or ""
    examples, current = [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("python cli.py"):
            current = stripped
        elif current is not None:
            current += " " + stripped
        else:
            continue
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        examples.append(current)
        current = None
    return examples


def test_every_command_shows_an_example():
    assert set(ORDER) == set(cli.main.commands)
    for name in ORDER:
        assert help_examples(name), f"{name} --help has no example"


def test_every_help_example_runs_as_written(tmp_path):
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    shutil.copy(REPO / "cli.py", tmp_path / "cli.py")
    # one command's examples write different outputs and read only what earlier commands
    # wrote, so they run side by side (each on its share of the cores: most of an example's
    # time is starting Python and torch); finetune's --cache example reads what the embed
    # example before it writes, so finetune's run in order
    workers = min(2, len(os.sched_getaffinity(0)))
    threads = str(max(1, len(os.sched_getaffinity(0)) // workers))

    def run(example, alone):
        command = example.replace(*OFFLINE_MODEL)
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore",
               **({} if alone else {"OMP_NUM_THREADS": threads})}
        argv = [sys.executable, *shlex.split(command)[1:]]
        return example, subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True,
                                       text=True, timeout=600)

    ran = 0
    for name in ORDER:
        alone = name in IN_ORDER
        with ThreadPoolExecutor(1 if alone else workers) as pool:
            for example, done in pool.map(lambda e: run(e, alone), help_examples(name)):
                assert done.returncode == 0, f"{example}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
                ran += 1
    assert ran >= 18
    assert (tmp_path / "runs" / "ph" / "report.html").exists()
    assert (tmp_path / "pair_preds.csv").read_text().count("\n") > 100
