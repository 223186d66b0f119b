"""Issue 21: nothing a user is handed can crash, hang, escape or silently change their results.
One test (or a few) per finding, numbered as in the issue; every crafted file is made here."""
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from cache.store import Cache

from helpers import TINY, fails_with, invoke, make_records, write_fasta



def embed(table, out, *extra):
    return invoke("embed", *TINY, "--input", table, "--seq-col", "seq", "--id-col", "id",
                  "--label", "y", "--quiet", "--chunk-rows", "16", "--dtype", "float32",
                  "--out", out, *extra)


def head_copy(world, tmp_path, head):
    target = tmp_path / head
    shutil.copytree(world / "runs" / "mean" / head, target)
    return target


def predictions(world, head_dir, out):
    result = invoke("predict", "--head-dir", head_dir, "--cache", world / "c.zarr", "--out", out)
    assert result.exit_code == 0, result.output
    return pd.read_csv(out).set_index("id").iloc[:, -1]


def rewrite_skops(head_dir, change):
    import skops.io

    path = head_dir / "head.skops"
    pipeline = skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
    change(pipeline[-1])
    skops.io.dump(pipeline, path)


# ---- 1. crafted head folders ---------------------------------------------------------------------
def _tree_nodes(field, value):
    def change(forest):
        tree = forest.estimators_[0].tree_
        state = tree.__getstate__()
        state["nodes"][field][0] = value
        tree.__setstate__(state)
    return change


@pytest.mark.parametrize("field,value", [("left_child", 10**9), ("feature", 10**6),
                                         ("right_child", 0)])
def test_crafted_tree_indices_are_refused(world, tmp_path, isolated, field, value):
    head = head_copy(world, tmp_path, "rf")
    rewrite_skops(head, _tree_nodes(field, value))
    outcome = isolated.run("predict", "--head-dir", head, "--cache", world / "c.zarr")
    assert outcome.clean and outcome.exit_code != 0, outcome
    assert "refusing" in outcome.output and "tree" in outcome.output


def test_a_crafted_neighbour_index_is_rebuilt_not_trusted(world, tmp_path, isolated):
    head = head_copy(world, tmp_path, "knn")
    expected = predictions(world, head, tmp_path / "before.csv")

    def change(knn):  # a KD-tree search (brute force is what 128 features get) with bad indices
        from sklearn.neighbors import KDTree

        tree = KDTree(knn._fit_X, leaf_size=knn.leaf_size)
        state = list(tree.__getstate__())
        state[1] = state[1].copy()
        state[1][:5] = 10**9  # idx_array: indices into the training points
        tree.__setstate__(tuple(state))
        knn._tree, knn._fit_method = tree, "kd_tree"
    rewrite_skops(head, change)
    outcome = isolated.run("predict", "--head-dir", head, "--cache", world / "c.zarr",
                           "--out", tmp_path / "after.csv")
    assert outcome.clean and outcome.exit_code == 0, outcome
    got = pd.read_csv(tmp_path / "after.csv").set_index("id").iloc[:, -1]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)  # tree vs brute-force sums


@pytest.mark.parametrize("change", [
    lambda svr: setattr(svr, "support_vectors_", svr.support_vectors_[:2]),
    lambda svr: setattr(svr, "_gamma", float("nan")),  # SVR predicts from these by BLAS
    lambda svr: setattr(svr, "_gamma", -1.0),
    lambda svr: setattr(svr, "_dual_coef_", np.full_like(svr._dual_coef_, np.inf)),
], ids=["counts", "nan-gamma", "negative-gamma", "inf-coefficients"])
def test_crafted_svm_arrays_are_refused(world, tmp_path, isolated, change):
    head = head_copy(world, tmp_path, "svr")
    rewrite_skops(head, change)
    outcome = isolated.run("predict", "--head-dir", head, "--cache", world / "c.zarr")
    assert outcome.clean and outcome.exit_code != 0 and "refusing" in outcome.output, outcome


@pytest.mark.parametrize("key,value", [("left_child", "1000000"), ("num_leaves", "2000000000"),
                                       ("split_feature", "1000000"), ("decision_type", "1")])
def test_crafted_lightgbm_models_are_refused(world, tmp_path, isolated, key, value):
    head = head_copy(world, tmp_path, "lightgbm")
    text = (head / "lightgbm_0.txt").read_text().splitlines()
    at = next(i for i, line in enumerate(text) if line.startswith(key + "="))
    n = len(text[at].split("=", 1)[1].split(" "))
    text[at] = f"{key}=" + " ".join([value] * n) if key != "num_leaves" else f"{key}={value}"
    (head / "lightgbm_0.txt").write_text("\n".join(text) + "\n")
    outcome = isolated.run("predict", "--head-dir", head, "--cache", world / "c.zarr", timeout=60)
    assert outcome.clean and outcome.exit_code != 0 and "refusing" in outcome.output, outcome


def test_a_huge_network_layout_is_refused_before_allocating(world, tmp_path, isolated):
    head = head_copy(world, tmp_path, "mlp2")
    description = json.loads((head / "head.json").read_text())
    description["state"]["n_outputs_"] = 10**9
    (head / "head.json").write_text(json.dumps(description))
    outcome = isolated.run("predict", "--head-dir", head, "--cache", world / "c.zarr",
                           memory=1 << 30)
    assert outcome.clean and outcome.exit_code != 0, outcome


# ---- 2. links are never written through ------------------------------------------------------------
def test_links_in_tool_folders_are_never_written_through(world, tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep")
    cache = tmp_path / "c.zarr"
    shutil.copytree(world / "c.zarr", cache)
    (cache / ".hyena-embed.lock").unlink(missing_ok=True)
    os.symlink(precious, cache / ".hyena-embed.lock")
    fails_with("symbolic link", "embed", *TINY, "--input", world / "t.csv", "--seq-col", "seq",
               "--id-col", "id", "--label", "y", "--quiet", "--chunk-rows", "16", "--dtype",
               "float32", "--out", cache)
    runs = tmp_path / "runs"
    shutil.copytree(world / "runs", runs)
    (runs / "commands.jsonl").unlink(missing_ok=True)
    os.symlink(precious, runs / "commands.jsonl")
    fails_with("symbolic link", "fit-head", "--cache", world / "c.zarr", "--label", "y",
               "--head", "ridge", "--no-plots", "--out", runs)
    (runs / "commands.jsonl").unlink()
    os.symlink(precious, runs / "report.html")
    assert invoke("report", runs).exit_code == 0
    assert precious.read_text() == "keep"
    assert not (runs / "report.html").is_symlink()  # the link was replaced, not followed


# ---- 3. empty pair cells ------------------------------------------------------------------------------
def test_an_empty_allele_is_an_error_naming_the_pair(tmp_path):
    table = pd.DataFrame({"ID": ["p0", "p1"], "REF_SEQ": ["ACGTACGTAC", "ACGTACGTAC"],
                          "ALT_SEQ": ["ACGTTCGTAC", ""]})
    table.to_csv(tmp_path / "pairs.csv", index=False)
    fails_with("pair 'p1'", "embed", *TINY, "--input", tmp_path / "pairs.csv", "--ref-col", "REF_SEQ",
               "--alt-col", "ALT_SEQ", "--id-col", "ID", "--out", tmp_path / "p.zarr")
    assert not (tmp_path / "p.zarr").exists()


# ---- 4. ids are text ----------------------------------------------------------------------------------
def test_ids_with_leading_zeros_match_and_stay_text(world, tmp_path):
    labels = pd.DataFrame({"id": [f"{i:03d}" for i in range(80)], "z": np.arange(80) * 0.1})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    result = invoke("fit-head", "--cache", world / "c.zarr", "--labels", tmp_path / "labels.csv",
                    "--label", "z", "--head", "ridge", "--no-plots", "--out", tmp_path / "runs")
    assert result.exit_code == 0 and "80 labelled rows" in result.output, result.output
    labels.assign(id=[f"{i:04d}" for i in range(80)]).to_csv(tmp_path / "other.csv", index=False)
    fails_with("'000'", "fit-head", "--cache", world / "c.zarr", "--labels", tmp_path / "other.csv",
               "--label", "z", "--head", "ridge", "--no-plots", "--out", tmp_path / "runs2")
    pairs = pd.DataFrame({"ID": ["0007", "0010"], "REF_SEQ": ["ACGTACGTAC"] * 2,
                          "ALT_SEQ": ["ACGTTCGTAC", "ACGTACCTAC"]})
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    assert invoke("embed", *TINY, "--input", tmp_path / "pairs.csv", "--ref-col", "REF_SEQ",
                  "--alt-col", "ALT_SEQ", "--id-col", "ID", "--quiet",
                  "--out", tmp_path / "p.zarr").exit_code == 0
    assert list(Cache.open(tmp_path / "p.zarr").pairs()["id"]) == ["0007", "0010"]


# ---- 5. verify checks everything the settings promise; embed repairs it ---------------------------------
@pytest.mark.parametrize("damage", ["pooled array removed", "progress byte flipped",
                                    "ids metadata removed"])
def test_verify_sees_structural_damage_and_embed_repairs_it(world, tmp_path, damage):
    cache = tmp_path / "c.zarr"
    shutil.copytree(world / "c.zarr", cache)
    if damage == "pooled array removed":
        shutil.rmtree(cache / "pooled" / "mean")
    elif damage == "progress byte flipped":
        chunk = cache / "progress" / "chunk_done" / "c" / "0"
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
    else:
        (cache / "ids" / "zarr.json").unlink()
    result = invoke("verify", cache)
    assert result.exit_code != 0 and "problem" in result.output, result.output
    assert invoke("info", cache).exit_code in (0, 1)  # a message, never a crash
    if damage != "progress byte flipped":  # (the embeddings themselves are whole then)
            fails_with("damaged", "fit-head", "--cache", cache, "--label", "y", "--head", "ridge",
                   "--no-plots", "--out", tmp_path / "runs")
    assert embed(world / "t.csv", cache).exit_code == 0
    assert invoke("verify", cache).exit_code == 0
    np.testing.assert_array_equal(Cache.open(cache).pooled("mean"),
                                  Cache.open(world / "c.zarr").pooled("mean"))


# ---- 6. --overwrite clears only what the tool wrote -------------------------------------------------------
@pytest.mark.parametrize("where", ["pooled/notes.txt", "labels/mine/data.txt"])
def test_overwrite_keeps_user_files_inside_tool_named_folders(world, tmp_path, where):
    cache = tmp_path / "c.zarr"
    shutil.copytree(world / "c.zarr", cache)
    (cache / where).parent.mkdir(parents=True, exist_ok=True)
    (cache / where).write_text("mine")
    fails_with(where, "embed", *TINY, "--input", world / "t.csv", "--seq-col", "seq", "--id-col",
               "id", "--rc", "--quiet", "--out", cache, "--overwrite")
    assert (cache / where).read_text() == "mine" and Cache.open(cache).pooled("mean").shape[0] == 80


# ---- 7. report and predict read only inside their folders ----------------------------------------------
def test_report_never_reads_outside_its_folder(world, tmp_path):
    runs = tmp_path / "deep" / "runs"
    shutil.copytree(world / "runs", runs)
    secret = tmp_path / "secret" / "x"
    secret.mkdir(parents=True)
    (secret / "config.json").write_text(json.dumps({"task": "SECRET-CONFIG"}))
    board = pd.read_csv(runs / "leaderboard.csv")
    board.loc[0, "features"] = "../../secret"
    board.loc[0, "head"] = "x"
    board.to_csv(runs / "leaderboard.csv", index=False)
    result = fails_with("leaves the folder", "report", runs)
    assert "SECRET" not in result.output
    assert not (runs / "report.html").exists() or "SECRET" not in (runs / "report.html").read_text()


def test_a_config_linked_to_an_endless_file_is_refused(world, tmp_path, isolated):
    head = head_copy(world, tmp_path, "lightgbm")
    (head / "config.json").unlink()
    os.symlink("/dev/zero", head / "config.json")
    outcome = isolated.run("predict", "--head-dir", head, "--cache", world / "c.zarr",
                           timeout=60, memory=1 << 30)
    assert outcome.clean and outcome.exit_code != 0 and "link" in outcome.output, outcome


# ---- 8. writes that cannot be cut off; a lost board row comes back ---------------------------------------
def test_a_finetune_killed_before_its_board_row_writes_it_on_rerun(world, tmp_path):
    args = ["finetune", *TINY, "--input", world / "t.csv", "--seq-col", "seq", "--id-col", "id",
            "--label", "y", "--head", "linear", "--epochs", "1", "--no-plots", "--quiet",
            "--out", tmp_path / "ft"]
    assert invoke(*args).exit_code == 0
    (tmp_path / "ft" / "leaderboard.csv").unlink()  # the kill came after the last checkpoint
    result = invoke(*args)
    assert result.exit_code == 0 and "missing leaderboard row" in result.output, result.output
    assert len(pd.read_csv(tmp_path / "ft" / "leaderboard.csv")) == 1
    assert "already finished" in invoke(*args).output


def test_a_cut_off_board_is_a_message(world, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(world / "runs", runs)
    (runs / "leaderboard.csv").write_text("")
    fails_with("leaderboard.csv is damaged", "report", runs)
    fails_with("leaderboard.csv", "fit-head", "--cache", world / "c.zarr", "--label", "y",
               "--head", "ridge", "--no-plots", "--out", runs)


# ---- 9. inputs and outputs kept apart; odd but valid inputs read ---------------------------------------
def test_out_inside_an_input_folder_is_refused(world, tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    pd.read_csv(world / "t.csv").to_parquet(folder / "part0.parquet")
    fails_with("overlap", "embed", *TINY, "--input", folder, "--seq-col", "seq", "--id-col", "id",
               "--out", folder / "out.zarr")
    assert not (folder / "out.zarr").exists()


def test_center_window_and_dotted_out_and_bom(tmp_path, monkeypatch):
    fasta = write_fasta(tmp_path / "x.fa", make_records(5, lo=30, hi=60))
    for bad in ("-5", "0"):
        fails_with("--center-window", "embed", *TINY, "--input", fasta, "--per-position",
                   "--center-window", bad, "--out", tmp_path / "w.zarr")
    monkeypatch.chdir(tmp_path)
    fails_with("current folder", "embed", *TINY, "--input", fasta, "--out", "./x/..")
    assert not (tmp_path / "x").exists()
    bom = tmp_path / "bom.fa"
    bom.write_bytes(b"\xef\xbb\xbf" + fasta.read_bytes())
    assert invoke("embed", *TINY, "--input", bom, "--quiet", "--out", tmp_path / "b.zarr").exit_code == 0
    assert list(Cache.open(tmp_path / "b.zarr").ids) == [f"seq{i}" for i in range(5)]


# ---- 10. tracebacks that became one line ----------------------------------------------------------------------
def _config_edit(head, **changes):
    config = json.loads((head / "config.json").read_text())
    config.update(changes)
    (head / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("change", [
    {"features": ["../ids"]}, {"kmer_max_k": 40}, {"labels": "y"}, {"task": "ranking"}])
def test_crafted_head_configs_are_messages(world, tmp_path, change):
    head = head_copy(world, tmp_path, "mlp2")
    _config_edit(head, **change)
    fails_with("fit the head again", "predict", "--head-dir", head, "--cache", world / "c.zarr")


def test_head_description_and_width_mismatches_are_messages(world, tmp_path):
    head = head_copy(world, tmp_path, "mlp2")
    (head / "head.json").write_text("[1, 2]")
    fails_with("head.json is damaged", "predict", "--head-dir", head, "--cache", world / "c.zarr")
    other = head_copy(world, tmp_path / "o", "lightgbm")
    _config_edit(other, features=["mean", "mean"])  # twice the width the booster takes
    fails_with("takes", "predict", "--head-dir", other, "--cache", world / "c.zarr")


@pytest.mark.parametrize("damage", ["huge shape", "unknown data type", "bogus codec",
                                    "zero chunk", "stray v2 metadata", "not json"])
def test_damaged_cache_metadata_is_a_message_naming_the_file(world, tmp_path, damage):
    cache = tmp_path / "c.zarr"
    shutil.copytree(world / "c.zarr", cache)
    meta_file = cache / "pooled" / "mean" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    if damage == "huge shape":
        meta["shape"] = [10**15, 128]
    elif damage == "unknown data type":
        meta["data_type"] = "complex512"
    elif damage == "bogus codec":
        meta["codecs"] = [{"name": "evil"}]
    elif damage == "zero chunk":
        meta["chunk_grid"]["configuration"]["chunk_shape"] = [0, 128]
    meta_file.write_text(json.dumps(meta))
    if damage == "stray v2 metadata":
        (cache / "pooled" / "mean" / ".zarray").write_text("{}")
    if damage == "not json":
        meta_file.write_text('{"shape": [80 128]}')
    for args in (["verify", cache], ["fit-head", "--cache", cache, "--label", "y", "--head",
                                     "ridge", "--no-plots", "--out", tmp_path / "r"],
                 ["predict", "--head-dir", world / "runs" / "mean" / "mlp2", "--cache", cache]):
        result = invoke(*args)
        assert result.exit_code != 0 and "pooled/mean" in result.output, result.output


def test_damaged_finetuned_models_and_checkpoints_are_messages(world, tmp_path):
    args = ["finetune", *TINY, "--input", world / "t.csv", "--seq-col", "seq", "--id-col", "id",
            "--label", "y", "--head", "linear", "--epochs", "1", "--no-plots", "--quiet",
            "--out", tmp_path / "ft"]
    assert invoke(*args).exit_code == 0
    run = tmp_path / "ft" / "finetune-mean-u2" / "linear"
    model = run / "best_model.pt"
    model.write_bytes(model.read_bytes()[:5000])
    fails_with("best_model.pt cannot be loaded", "predict", "--head-dir", run,
               "--input", world / "t.csv", "--seq-col", "seq", "--id-col", "id")
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    fails_with("checkpoint.pt is damaged", *args)


def test_report_on_damaged_run_files_is_a_message_or_a_page(world, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(world / "runs", runs)
    with open(runs / "commands.jsonl", "a") as fh:
        fh.write('{"time": "2026-12-04", "comm')  # cut off by a kill
    assert invoke("report", runs).exit_code == 0
    assert "damaged line" in (runs / "report.html").read_text()
    (runs / "mean" / "ridge").mkdir(exist_ok=True)
    (runs / "mean" / "rf" / "config.json").write_text("")
    fails_with("config.json is damaged", "report", runs)


@pytest.mark.parametrize("option,message", [(["--epochs", "0"], "--epochs"),
                                            (["--head-param", "lightgbm.num_leaves=1"], "num_leaves"),
                                            (["--kmer-max-k", "16"], "--kmer-max-k")])
def test_impossible_fit_options_are_messages(world, tmp_path, option, message):
    fails_with(message, "fit-head", "--cache", world / "c.zarr", "--label", "y", "--head", "lightgbm",
               "--baseline", "kmer", "--no-plots", "--out", tmp_path / "r", *option)
    assert not (tmp_path / "r" / "mean").exists()


# ---- 11. every check that can refuse a run comes before its first write --------------------------------------
def test_a_run_refused_for_its_split_has_written_nothing(world, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(world / "runs", runs)
    before = {p: p.read_bytes() for p in runs.rglob("*") if p.is_file() and p.suffix != ".lock"}
    fails_with("another split", "fit-head", "--cache", world / "c.zarr", "--label", "y",
               "--head", "rf", "--seed", "1", "--no-plots", "--out", runs)
    after = {p: p.read_bytes() for p in runs.rglob("*") if p.is_file() and p.suffix != ".lock"}
    assert after == before
    fails_with("another split", "finetune", *TINY, "--input", world / "t.csv", "--seq-col", "seq",
               "--id-col", "id", "--label", "y", "--head", "linear", "--epochs", "1", "--seed",
               "1", "--no-plots", "--quiet", "--out", runs)
    assert not (runs / "finetune-mean-u2").exists()


# ---- 12. damaged metadata names its file ------------------------------------------------------------------
def test_a_damaged_root_metadata_file_is_named(world, tmp_path):
    cache = tmp_path / "c.zarr"
    shutil.copytree(world / "c.zarr", cache)
    (cache / "zarr.json").write_text((cache / "zarr.json").read_text()[:-40])
    for args in (["verify", cache], ["info", cache],
                 ["fit-head", "--cache", cache, "--label", "y", "--out", tmp_path / "r"]):
        fails_with(f"{cache / 'zarr.json'} is damaged", *args)


# ---- 13. the token budget is a recorded setting ---------------------------------------------------------------
def test_batch_tokens_are_recorded_and_a_resume_keeps_them(world, tmp_path):
    out = tmp_path / "c.zarr"
    assert embed(world / "t.csv", out, "--batch-tokens", "700").exit_code == 0
    assert Cache.open(out).settings["batch_tokens"] == 700
    assert "already complete" in embed(world / "t.csv", out).output  # the recorded budget
    fails_with("batch_tokens", "embed", *TINY, "--input", world / "t.csv", "--seq-col", "seq",
               "--id-col", "id", "--label", "y", "--quiet", "--chunk-rows", "16", "--dtype",
               "float32", "--out", out, "--batch-tokens", "5000")


# ---- issue 22, item 4: runs that tell the truth about themselves ---------------------------------------
def test_random_weights_are_named_by_fit_head_and_predict(world, tmp_path):
    result = invoke("fit-head", "--cache", world / "c.zarr", "--label", "y", "--head", "ridge",
                    "--baseline", "kmer", "--kmer-max-k", "3", "--no-plots", "--out", tmp_path / "runs")
    assert result.exit_code == 0 and "RANDOM weights" in result.output, result.output
    assert "difference in Pearson r" in result.output  # a difference, never read as a correlation
    result = invoke("predict", "--head-dir", tmp_path / "runs" / "mean" / "ridge",
                    "--cache", world / "c.zarr", "--out", tmp_path / "p.csv")
    assert result.exit_code == 0 and "RANDOM weights" in result.output, result.output


def test_lightgbm_threads_are_the_idle_cores():
    import heads.cores as machine

    cores = len(os.sched_getaffinity(0))
    assert machine.lightgbm_threads(idle=cores) == cores  # nothing else running
    assert machine.lightgbm_threads(idle=0.1) == 1  # every core taken by others
    if cores >= 2:
        assert machine.lightgbm_threads(idle=cores - 1.0) == cores - 1
    machine._IDLE["at"] = -float("inf")
    measured = machine.idle_cores(0.05)
    assert 0.0 <= measured <= cores + 1e-9
    machine._IDLE["cores"] = 123.0  # a measurement is reused for a while, not taken per fit
    assert machine.idle_cores() == 123.0
    machine._IDLE["at"] = -float("inf")


def test_usable_cores_respect_a_containers_cpu_quota(tmp_path, monkeypatch):
    import heads.cores as machine

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(machine, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(machine, "CGROUP_V1_QUOTA", tmp_path / "quota")
    monkeypatch.setattr(machine, "CGROUP_V1_PERIOD", tmp_path / "period")
    assert machine.usable_cores() == cores  # no cgroup files: the affinity
    (tmp_path / "quota").write_text("-1\n")
    (tmp_path / "period").write_text("100000\n")
    assert machine.usable_cores() == cores  # v1, unlimited
    (tmp_path / "quota").write_text("50000\n")
    assert machine.usable_cores() == 1  # v1, half a CPU: one thread
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert machine.usable_cores() == cores  # v2 is read first: unlimited
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert machine.usable_cores() == min(cores, 2)
    (tmp_path / "cpu.max").write_text("garbage\n")
    assert machine.usable_cores() == cores
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert machine.lightgbm_threads(idle=64.0) == min(cores, 2)  # never more than the quota
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS has no affinity call: every CPU
    assert machine._affinity() == set(range(os.cpu_count()))
    assert machine.lightgbm_threads(idle=64.0) == min(os.cpu_count(), 2)

def test_a_lightgbm_head_is_the_same_model_whatever_threads_it_got(monkeypatch):
    import heads.cores as machine
    import heads.registry as registry

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 40)).astype(np.float32)
    y = X[:, :4].sum(1) + np.sin(X[:, 5]) + rng.normal(size=3000)
    predictions = []
    for idle in (1.0, 2.0):  # the machine's load decides the threads; never the model
        monkeypatch.setattr(machine, "idle_cores", lambda idle=idle: idle)
        head = registry.make_head("lightgbm", "regression").fit(X[:2000], y[:2000], X[2000:2500], y[2000:2500])
        assert head.threads_ == int(idle)
        predictions.append(head.predict(X[2500:]))
    np.testing.assert_array_equal(*predictions)
