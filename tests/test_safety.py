"""Safe and sound (issue 13): head folders that cannot run code, --overwrite that cannot delete
a user's files, caches that cannot lie, one writer at a time, creation that survives a kill,
inputs read as written, and one-line errors instead of tracebacks."""
import json
import os
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest

from cache.folders import MARKER
from cache.store import Cache
from hyena_embed.locking import exclusive

from helpers import TINY, fails_with, invoke, make_records, write_fasta



@pytest.fixture
def labelled(tmp_path):
    rng = np.random.default_rng(0)
    recs = make_records(60, lo=40, hi=120)
    table = pd.DataFrame({"id": [r for r, _ in recs], "seq": [s for _, s in recs],
                          "y": rng.normal(size=60).round(3),
                          "kind": rng.choice(["a", "b"], size=60)})
    table.to_csv(tmp_path / "t.csv", index=False)
    return tmp_path / "t.csv"


def embed(table, out, *extra):
    return invoke("embed", *TINY, "--input", table, "--seq-col", "seq", "--id-col", "id",
                  "--label", "y", "--label", "kind", "--quiet", "--chunk-rows", "16",
                  "--dtype", "float32", "--out", out, *extra)


# ---- 1. code execution -----------------------------------------------------------------------
class _Payload:
    """Unpickling this creates a file: the proof that a pickle ran code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_pickle_in_a_head_folder_never_runs(labelled, tmp_path):
    assert embed(labelled, tmp_path / "c.zarr").exit_code == 0
    assert invoke("fit-head", "--cache", tmp_path / "c.zarr", "--label", "y", "--head", "ridge",
                  "--no-plots", "--out", tmp_path / "runs").exit_code == 0
    head_dir = tmp_path / "runs" / "mean" / "ridge"
    proof = tmp_path / "code_ran.txt"
    (head_dir / "head.joblib").write_bytes(pickle.dumps(_Payload(str(proof))))
    config = json.loads((head_dir / "config.json").read_text())
    for model_file in ("head.joblib", str(head_dir / "head.joblib"), "../../../x.joblib"):
        config["model_file"] = model_file
        (head_dir / "config.json").write_text(json.dumps(config))
        result = invoke("predict", "--head-dir", head_dir, "--cache", tmp_path / "c.zarr")
        assert result.exit_code != 0
        assert "pickle" in result.output or "plain file name" in result.output
    result = invoke("finetune", *TINY, "--input", labelled, "--seq-col", "seq", "--id-col", "id",
                    "--label", "y", "--head", "ridge", "--init-head", head_dir, "--unfreeze", "0",
                    "--out", tmp_path / "ft")
    assert result.exit_code != 0
    assert not proof.exists()
    # the head as fit-head wrote it: pickle-free, and predict matches its test predictions
    config["model_file"] = "head.json"
    (head_dir / "config.json").write_text(json.dumps(config))
    (head_dir / "head.joblib").unlink()
    result = invoke("predict", "--head-dir", head_dir, "--cache", tmp_path / "c.zarr",
                    "--out", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    predicted = pd.read_csv(tmp_path / "p.csv").set_index("id").pred_y
    tested = pd.read_csv(head_dir / "test_predictions.csv").set_index("id").pred_y
    np.testing.assert_allclose(predicted[tested.index], tested, rtol=1e-6)


# ---- 2. --overwrite never deletes a user's files -------------------------------------------------
def test_overwrite_refuses_folders_of_user_files_and_the_current_folder(labelled, tmp_path,
                                                                         monkeypatch):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    fails_with("did not make", "embed", *TINY, "--input", labelled, "--seq-col", "seq",
               "--out", precious, "--overwrite")
    assert (precious / "thesis.txt").read_text() == "years of work"
    monkeypatch.chdir(tmp_path)
    fails_with("current folder", "embed", *TINY, "--input", labelled, "--seq-col", "seq",
               "--out", ".", "--overwrite")
    assert labelled.exists()
    # a cache of ours with a user's file dropped into it: not cleared either
    assert embed(labelled, tmp_path / "c.zarr").exit_code == 0
    (tmp_path / "c.zarr" / "notes.txt").write_text("keep me")
    fails_with("did not make (notes.txt)", "embed", *TINY, "--input", labelled, "--seq-col", "seq",
               "--id-col", "id", "--rc", "--out", tmp_path / "c.zarr", "--overwrite")
    assert (tmp_path / "c.zarr" / "notes.txt").exists()


def test_overwrite_replaces_a_cache_of_ours(labelled, tmp_path):
    assert embed(labelled, tmp_path / "c.zarr").exit_code == 0
    fails_with("other settings", "embed", *TINY, "--input", labelled, "--seq-col", "seq",
               "--id-col", "id", "--rc", "--out", tmp_path / "c.zarr")
    result = invoke("embed", *TINY, "--input", labelled, "--seq-col", "seq", "--id-col", "id",
                    "--rc", "--quiet", "--out", tmp_path / "c.zarr", "--overwrite")
    assert result.exit_code == 0 and Cache.open(tmp_path / "c.zarr").settings["rc"] is True


# ---- 3. caches that cannot lie --------------------------------------------------------------------
def test_deleted_or_corrupt_chunks_are_errors_then_repaired_by_rerunning(labelled, tmp_path):
    out = tmp_path / "c.zarr"
    assert embed(labelled, out).exit_code == 0
    good = Cache.open(out)
    mean, y = good.pooled("mean").copy(), good.label("y").copy()
    os.remove(out / "pooled" / "mean" / "c" / "1" / "0")  # rows 16-31
    os.remove(out / "labels" / "y" / "c" / "2")
    chunk = out / "pooled" / "mean" / "c" / "2" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-7])  # truncated
    with pytest.raises(Exception, match="damaged"):
        Cache.open(out).pooled("mean")
    with pytest.raises(Exception, match="damaged"):
        Cache.open(out).label("y")
    fails_with("damaged", "fit-head", "--cache", out, "--label", "y", "--head", "ridge",
               "--out", tmp_path / "runs")
    report = fails_with("problem", "verify", out).output
    assert "row chunk 1" in report and "row chunk 2" in report and "labels/y" in report
    assert "rerun the embed command" in report
    again = embed(labelled, out)
    assert again.exit_code == 0 and "recomputing" in again.output and "mended" in again.output
    assert invoke("verify", out).exit_code == 0
    fixed = Cache.open(out)
    np.testing.assert_array_equal(fixed.pooled("mean"), mean)
    np.testing.assert_array_equal(fixed.label("y"), y)


# ---- 4. one writer at a time ----------------------------------------------------------------------
def test_a_second_writer_is_refused_and_told_who_holds_the_folder(labelled, tmp_path):
    out = tmp_path / "c.zarr"
    out.mkdir()
    (out / MARKER).write_text("{}")  # as the first run leaves it before taking the lock
    with exclusive(out):
        result = fails_with("being written by another run", "embed", *TINY, "--input", labelled,
                            "--seq-col", "seq", "--id-col", "id", "--out", out)
        assert f"pid {os.getpid()}" in result.output
    assert embed(labelled, out).exit_code == 0  # free again once the holder is done


# ---- 5. creation that survives a kill -------------------------------------------------------------
@pytest.mark.parametrize("stage", ["marker only", "half a store"])
def test_a_folder_killed_while_being_created_is_started_again(labelled, tmp_path, stage):
    out = tmp_path / "c.zarr"
    if stage == "marker only":
        out.mkdir()
        (out / MARKER).write_text("{}")
    else:
        assert embed(labelled, out).exit_code == 0
        meta = json.loads((out / "zarr.json").read_text())
        meta["attributes"].pop("initialised")  # as if killed before the last step of create
        (out / "zarr.json").write_text(json.dumps(meta))
        shutil.rmtree(out / "pooled")
    result = embed(labelled, out)  # no --overwrite needed
    assert result.exit_code == 0, result.output
    assert Cache.open(out).complete and invoke("verify", out).exit_code == 0


def test_a_run_that_fails_on_bad_input_leaves_no_folder(tmp_path):
    (tmp_path / "bad.fa").write_text(">r1\nACGTZ\n")
    fails_with("invalid character", "embed", *TINY, "--input", tmp_path / "bad.fa",
               "--out", tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


# ---- 6. inputs read as written ---------------------------------------------------------------------
def test_ids_stay_text_and_stray_label_values_are_named(tmp_path):
    recs = make_records(30, lo=30, hi=60)
    ids = ["007", "1e5", "nan_sample", "0.0"] + [f"r{i:03d}" for i in range(26)]
    values = [str(v) for v in np.linspace(5, 8, 30).round(2)]
    table = pd.DataFrame({"id": ids, "seq": [s for _, s in recs], "pH": values})
    table.to_csv(tmp_path / "ok.csv", index=False)
    result = invoke("embed", *TINY, "--input", tmp_path / "ok.csv", "--seq-col", "seq", "--id-col",
                    "id", "--label", "pH", "--quiet", "--out", tmp_path / "ok.zarr")
    assert result.exit_code == 0, result.output
    cache = Cache.open(tmp_path / "ok.zarr")
    assert list(cache.ids[:4]) == ["007", "1e5", "nan_sample", "0.0"]
    assert cache.label("pH").dtype == np.float64
    values[3], values[7] = "7,5", "n.a."
    table.assign(pH=values).to_csv(tmp_path / "bad.csv", index=False)
    result = fails_with("numeric except 2 value(s): '7,5', 'n.a.'", "embed", *TINY, "--input",
                        tmp_path / "bad.csv", "--seq-col", "seq", "--id-col", "id", "--label", "pH",
                        "--out", tmp_path / "bad.zarr")
    assert "--label-type" in result.output and not (tmp_path / "bad.zarr").exists()


def test_class_only_in_validation_is_a_clear_error(tmp_path):
    recs = make_records(40, lo=30, hi=60)
    kind = ["a", "b"] * 20
    split = ["train"] * 30 + ["val"] * 5 + ["test"] * 5
    kind[31] = "rare"
    pd.DataFrame({"id": [r for r, _ in recs], "seq": [s for _, s in recs], "kind": kind,
                  "split": split}).to_csv(tmp_path / "t.csv", index=False)
    assert invoke("embed", *TINY, "--input", tmp_path / "t.csv", "--seq-col", "seq", "--id-col",
                  "id", "--label", "kind", "--label", "split", "--quiet",
                  "--out", tmp_path / "c.zarr").exit_code == 0
    fails_with("'rare' only in val", "fit-head", "--cache", tmp_path / "c.zarr", "--label", "kind",
               "--split-col", "split", "--head", "logistic", "--out", tmp_path / "runs")


# ---- 7. one-line errors that name the file or option -------------------------------------------
def _model_dir(tmp_path, fixtures_dir, damage):
    target = tmp_path / "model"
    shutil.copytree(fixtures_dir / "tiny-1k" / "hf", target)
    weights = target / "model.safetensors"
    if damage == "truncated safetensors":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:  # a pytorch_model.bin that is not a checkpoint
        weights.unlink()
        (target / "pytorch_model.bin").write_bytes(b"not a torch file at all")
    return target


@pytest.mark.parametrize("damage", ["truncated safetensors", "broken pytorch_model.bin"])
def test_damaged_weights_are_a_message(tmp_path, fixtures_dir, damage):
    (tmp_path / "x.fa").write_text(">r\nACGT\n")
    fails_with("cannot load", "embed", "--model", _model_dir(tmp_path, fixtures_dir, damage),
               "--input", tmp_path / "x.fa", "--out", tmp_path / "o.zarr")


def test_bad_inputs_and_options_are_one_line_messages(labelled, tmp_path):
    fasta = write_fasta(tmp_path / "x.fa.gz", make_records(50), gz=True)
    truncated = tmp_path / "cut.fa.gz"
    truncated.write_bytes(fasta.read_bytes()[:200])
    fails_with("cut.fa.gz: cannot read it", "embed", *TINY, "--input", truncated, "--out", tmp_path / "a.zarr")
    garbage = tmp_path / "junk.fa.gz"
    garbage.write_bytes(b"\x1f\x8b" + os.urandom(300))
    fails_with("junk.fa.gz: cannot read it", "embed", *TINY, "--input", garbage, "--out", tmp_path / "b.zarr")
    fails_with("not an existing path", "embed", "--model", "no/such model dir", "--input", fasta,
               "--out", tmp_path / "c.zarr")
    fails_with("--chunk-rows", "embed", *TINY, "--input", fasta, "--chunk-rows", "0", "--out", tmp_path / "d.zarr")
    (tmp_path / "afile").write_text("x")
    fails_with("is a file", "embed", *TINY, "--input", fasta, "--out", tmp_path / "afile")
    locked = tmp_path / "readonly"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions
            pytest.skip("running as root: a read-only folder is still writable")
        fails_with("cannot write", "embed", *TINY, "--input", fasta, "--out", locked / "c.zarr")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("code,message", [("ENOSPC", "disk full"), ("EACCES", "cannot write"),
                                          ("EROFS", "cannot write")])
def test_disk_full_or_read_only_says_what_to_do(labelled, tmp_path, monkeypatch, code, message):
    import errno

    def fail(*args, **kwargs):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(tmp_path / "c.zarr"))

    monkeypatch.setattr(Cache, "write_chunk", fail)
    result = embed(labelled, tmp_path / "c.zarr")
    assert result.exit_code != 0 and message in result.output
    if code == "ENOSPC":
        assert "run the same command again" in result.output
    monkeypatch.undo()
    again = embed(labelled, tmp_path / "c.zarr")
    assert again.exit_code == 0, again.output  # the same command then works


def test_broken_head_folders_are_messages(labelled, tmp_path):
    assert embed(labelled, tmp_path / "c.zarr").exit_code == 0
    assert invoke("fit-head", "--cache", tmp_path / "c.zarr", "--label", "y", "--head", "mlp2",
                  "--head", "lightgbm", "--epochs", "3", "--no-plots",
                  "--out", tmp_path / "runs").exit_code == 0
    mlp, lgbm = tmp_path / "runs" / "mean" / "mlp2", tmp_path / "runs" / "mean" / "lightgbm"
    (mlp / "head.safetensors").write_bytes(b"\0" * 10)
    fails_with("cannot load the torch_mlp head", "predict", "--head-dir", mlp, "--cache", tmp_path / "c.zarr")
    (lgbm / "lightgbm_0.txt").unlink()
    fails_with("lacks lightgbm_0.txt", "predict", "--head-dir", lgbm, "--cache", tmp_path / "c.zarr")
    (lgbm / "config.json").write_text("{ not json")
    fails_with("config.json is damaged", "predict", "--head-dir", lgbm, "--cache", tmp_path / "c.zarr")


# ---- 8. predict refuses caches made with other value-changing settings ------------------------------
@pytest.mark.parametrize("other", [["--rc"], ["--shift", "0.0"], ["--dtype", "float16"],
                                   ["--layer", "1"]])
def test_predict_refuses_a_cache_with_other_settings(labelled, tmp_path, other):
    assert embed(labelled, tmp_path / "c.zarr").exit_code == 0
    assert invoke("fit-head", "--cache", tmp_path / "c.zarr", "--label", "y", "--head", "ridge",
                  "--no-plots", "--out", tmp_path / "runs").exit_code == 0
    base = [a for a in ["--dtype", "float32"] if "--dtype" not in other]
    assert invoke("embed", *TINY, "--input", labelled, "--seq-col", "seq", "--id-col", "id",
                  "--quiet", *base, *other, "--out", tmp_path / "other.zarr").exit_code == 0
    fails_with("made with", "predict", "--head-dir", tmp_path / "runs" / "mean" / "ridge",
               "--cache", tmp_path / "other.zarr")


def test_fit_head_refuses_an_out_another_run_is_writing(labelled, tmp_path):
    assert embed(labelled, tmp_path / "c.zarr").exit_code == 0
    (tmp_path / "runs").mkdir()
    with exclusive(tmp_path / "runs"):
        fails_with("being written by another run", "fit-head", "--cache", tmp_path / "c.zarr",
                   "--label", "y", "--head", "ridge", "--out", tmp_path / "runs")
    assert invoke("fit-head", "--cache", tmp_path / "c.zarr", "--label", "y", "--head", "ridge",
                  "--no-plots", "--out", tmp_path / "runs").exit_code == 0
