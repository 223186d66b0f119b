"""The README runs as written: every command block and every Python block, in order, in one
fresh folder holding a copy of examples/ (as esm and sqlite-utils test their docs).

The first block (set-up and the test command itself) is what CI runs; blocks preceded by
`<!-- readme-test: skip (...) -->` say why they are not run here."""
import os
import re
import shutil
import subprocess
import sys
import time

from conftest import REPO

BLOCK = re.compile(r"(<!-- readme-test: skip[^>]*-->\n)?```(bash|python)\n(.*?)```", re.S)


def readme_blocks():
    text = (REPO / "README.md").read_text()
    return [(m.group(2), m.group(3), bool(m.group(1))) for m in BLOCK.finditer(text)]


def test_readme_starts_with_set_up_and_test_commands():
    kind, first, _ = readme_blocks()[0]
    lines = [line for line in first.splitlines() if line.strip()]
    assert kind == "bash" and len(lines) == 2
    assert lines[0].startswith("pip install torch==2.13.0 -e") and "pytest" in lines[1]
    ci = (REPO / ".ci" / "run").read_text()
    assert "pytest -q" in ci and "torch==2.13.0" in ci


def test_every_readme_block_runs_as_written(tmp_path):
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    shutil.copy(REPO / "cli.py", tmp_path / "cli.py")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf_home"), "PYTHONWARNINGS": "ignore"}
    blocks = readme_blocks()[1:]
    ran, seconds = 0, []
    for kind, code, skip in blocks:
        if skip:
            continue
        command = ["bash", "-euo", "pipefail", "-c", code] if kind == "bash" else [sys.executable, "-c", code]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        seconds.append((time.perf_counter() - started, code.strip().splitlines()[0][:70]))
        assert done.returncode == 0, f"README block failed:\n{code}\n--- output ---\n" \
                                     f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        ran += 1
    assert ran >= 8
    # each block's time (the README promises under a minute each on 2 cores): printed with
    # `pytest -s`, and written where HYENA_EMBED_README_TIMES names a file
    table = "\n".join(f"{s:7.1f} s  {first}" for s, first in seconds)
    print(f"\nREADME blocks:\n{table}")
    if os.environ.get("HYENA_EMBED_README_TIMES"):
        with open(os.environ["HYENA_EMBED_README_TIMES"], "w") as fh:
            fh.write(table + "\n")
    # the main job's outputs exist and say what they are
    report = (tmp_path / "runs" / "demo" / "report.html").read_text()
    assert "RANDOM" in report and "best baseline (kmer/" in report
    assert (tmp_path / "runs" / "demo" / "new_predictions.csv").read_text().count("\n") == 41
