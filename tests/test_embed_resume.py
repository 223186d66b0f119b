"""Resume after kill -9, refusal of mismatched settings, and the 2-rank torchrun run."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cache.store import Cache

from helpers import make_records, write_fasta

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = [sys.executable, os.path.join(REPO, "cli.py"), "embed", "--model", "tiny-1k",
        "--random-init", "--quiet", "--pool", "mean", "--pool", "max", "--per-position",
        "--center-window", "8", "--chunk-rows", "8"]


def embed_cmd(fasta, out, *extra):
    return BASE + ["--input", str(fasta), "--out", str(out), *extra]


def env():
    e = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    return e


def same_cache(a, b):
    ca, cb = Cache.open(a), Cache.open(b)
    assert ca.complete and cb.complete
    assert list(ca.ids) == list(cb.ids)
    for m in ("mean", "max"):
        np.testing.assert_array_equal(ca.pooled(m), cb.pooled(m))
    np.testing.assert_array_equal(ca.group["positions/values"][:], cb.group["positions/values"][:])
    assert list(ca.sequences()) == list(cb.sequences())


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    fasta = write_fasta(tmp / "in.fa", make_records(400, lo=200, hi=1000, seed=4))
    reference = tmp / "ref.zarr"
    subprocess.run(embed_cmd(fasta, reference), check=True, env=env(), capture_output=True)
    return fasta, reference


def test_kill_9_then_resume_gives_identical_cache(workload, tmp_path):
    fasta, reference = workload
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen(embed_cmd(fasta, out), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until some, not all, chunks are written
        try:
            if Cache.open(out).chunk_done().sum() >= 2:
                break
        except Exception:  # not created yet, or a chunk being replaced
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = Cache.open(out)
    done = partial.chunk_done()
    assert not partial.complete and 0 < done.sum() < len(done), done
    with pytest.raises(Exception, match="incomplete"):
        partial.require_complete()
    result = subprocess.run(embed_cmd(fasta, out), env=env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr
    same_cache(out, reference)
    again = subprocess.run(embed_cmd(fasta, out), env=env(), capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to do" in again.stderr


def test_other_settings_refused_unless_overwrite(workload, tmp_path):
    fasta, reference = workload
    out = tmp_path / "copy.zarr"
    shutil.copytree(reference, out)
    refused = subprocess.run(embed_cmd(fasta, out, "--layer", "1"), env=env(),
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "other settings (layer)" in refused.stderr
    assert "Traceback" not in refused.stderr
    ok = subprocess.run(embed_cmd(fasta, out, "--layer", "1", "--overwrite"), env=env(),
                        capture_output=True, text=True)
    assert ok.returncode == 0 and Cache.open(out).settings["layer"] == 1


def test_two_ranks_equal_one_process(workload, tmp_path):
    fasta, reference = workload
    out = tmp_path / "ranks.zarr"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29533"] + embed_cmd(fasta, out)[1:]
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    same_cache(out, reference)
