"""finetune --cache: the frozen blocks' output read from an embed cache, the rest as end to end.

With float32 states and dropout off, a run that reads blocks 1..K from the cache must train
the same model as the run that computes them (the only difference: the frozen blocks ran in
other batches, so other FFT sizes round the last bits differently)."""
import numpy as np
import pandas as pd
import pytest
import torch

from cache.store import POSITION_CHUNK
from heads.prefix_cache import needed_layer
from tests.helpers import TINY, fails_with, invoke
from tests.test_finetune import gc_records, killed_and_straight_runs
from tests.test_finetune_pairs import PAIR_ARGS, motif_pairs, pair_table

# tiny-1k has 2 blocks: --unfreeze 1 trains block 2 and reads block 1's output (layer 1)
TRAIN = ["--unfreeze", "1", "--epochs", "2", "--dropout", "0", "--batch-size", "8",
         "--precision", "float32", "--quiet", "--no-plots"]
STATES = ["--per-position", "--layer", "1", "--dtype", "float32", "--precision", "float32", "--quiet"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finetune_cache")
    seqs = folder / "seqs.csv"
    pd.DataFrame([{"id": r.id, "seq": r.parts[0], "y": r.labels["y"]}
                  for r in gc_records(160, lo=40, hi=90)]).to_csv(seqs, index=False)
    pairs = pair_table(motif_pairs(160, length=60), folder / "pairs.csv")
    seq_args = ["--input", seqs, "--seq-col", "seq", "--id-col", "id"]
    pair_args = ["--input", pairs, *PAIR_ARGS]
    for name, args in (("seq_states", seq_args), ("pair_states", pair_args),
                       ("seq_rc_states", [*seq_args, "--rc"])):  # both strands: --rc-augment
        result = invoke("embed", *TINY, *args, *STATES, "--out", folder / f"{name}.zarr")
        assert result.exit_code == 0, result.output
    return {"folder": folder, "seq": seq_args, "pair": pair_args,
            "seq_states": folder / "seq_states.zarr", "pair_states": folder / "pair_states.zarr",
            "seq_rc_states": folder / "seq_rc_states.zarr"}


def _finetune(out, *args):
    result = invoke("finetune", *TINY, *args, *TRAIN, "--out", out)
    assert result.exit_code == 0, result.output
    return result


def _same_model(a, b, atol):
    log_a, log_b = (pd.read_csv(p / "training_log.csv") for p in (a, b))
    np.testing.assert_allclose(log_a["val_loss"], log_b["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(log_a["train_loss"], log_b["train_loss"], rtol=1e-4)
    pred_a, pred_b = (pd.read_csv(p / "test_predictions.csv") for p in (a, b))
    assert list(pred_a.iloc[:, 0]) == list(pred_b.iloc[:, 0])  # same rows, same order
    numeric = pred_a.select_dtypes("number").columns
    np.testing.assert_allclose(pred_a[numeric], pred_b[numeric], atol=atol)
    state_a = torch.load(a / "best_model.pt", weights_only=True)["state_dict"]
    state_b = torch.load(b / "best_model.pt", weights_only=True)["state_dict"]
    assert state_a.keys() == state_b.keys()  # the whole backbone is saved: predict needs nothing else
    changed = 0
    for name in state_a:
        torch.testing.assert_close(state_a[name], state_b[name], atol=atol, rtol=1e-4, msg=name)
        changed += not torch.equal(state_a[name], state_b[name])
    return changed


@pytest.mark.parametrize("kind", ["seq", "pair", "seq_rc"])
def test_a_cached_prefix_run_trains_the_end_to_end_model(tmp_path, inputs, kind):
    """seq_rc: --rc-augment, each training row's strand drawn per epoch; the cached run reads
    that strand's states (positions/rc_values for the reverse complement)."""
    labels = ["--label", "neither", "--features", "delta-mean+delta-site"] if kind == "pair" \
        else ["--label", "y", *(["--rc-augment"] if kind == "seq_rc" else [])]
    run = "finetune-delta-mean+delta-site-u1" if kind == "pair" else "finetune-mean-u1"
    data = inputs["pair" if kind == "pair" else "seq"]
    _finetune(tmp_path / "e2e", *data, *labels)
    result = _finetune(tmp_path / "cached", *data, *labels, "--cache", inputs[f"{kind}_states"])
    a, b = tmp_path / "e2e" / run / "mlp3", tmp_path / "cached" / run / "mlp3"
    changed = _same_model(a, b, atol=2e-4)
    assert changed > 0  # the two runs did compute separately (not one copied from the other)
    config = (b / "config.json").read_text()
    assert '"layer": 1' in config and '"dtype": "float32"' in config  # the cache's identity
    # the saved model carries every block: predict from raw sequences, no cache needed
    preds = tmp_path / "preds.csv"
    args = data
    result = invoke("predict", "--head-dir", b, *args, "--out", preds)
    assert result.exit_code == 0, result.output
    expected = pd.read_csv(b / "test_predictions.csv", dtype={"id": str}).set_index("id")
    got = pd.read_csv(preds, dtype={"id": str}).set_index("id")
    pred = [c for c in expected.columns if c.startswith("pred_")]
    assert len(expected) > 10 and pred
    np.testing.assert_allclose(got.loc[expected.index, pred], expected[pred], atol=2e-4)


@pytest.mark.parametrize("kind", ["pair", "seq_rc"])
def test_states_read_from_disk_a_batch_ahead_train_as_those_held_in_memory(tmp_path, inputs,
                                                                           monkeypatch, kind):
    """From disk, epochs go chunk by chunk and each chunk is decoded about once an epoch; the
    same chunk-ordered batches with the states in memory train the same model. seq_rc: with
    --rc-augment the batch read ahead is of each row's drawn strand."""
    import heads.prefix_cache
    from heads.prefix_cache import PrefixStates

    args = [*inputs["pair"], "--label", "neither", "--cache", inputs["pair_states"]] \
        if kind == "pair" else \
        [*inputs["seq"], "--label", "y", "--rc-augment", "--cache", inputs["seq_rc_states"]]
    run = "finetune-delta-mean-u1" if kind == "pair" else "finetune-mean-u1"
    monkeypatch.setattr(PrefixStates, "chunk_ordered", property(lambda self: True))
    monkeypatch.setattr(PrefixStates, "chunks_per_group", property(lambda self: 1))  # as below
    memory = _finetune(tmp_path / "memory", *args)
    assert "held in memory" in memory.output
    monkeypatch.undo()
    from heads.trainer import Trainer

    reads, close = [], PrefixStates.close
    monkeypatch.setattr(PrefixStates, "close", lambda self: (
        reads.append((self.chunks_read, len(self.arrays) * int(np.ceil(self.total / POSITION_CHUNK)),
                      {strand for strand, _ in self._chunks})), close(self)))
    passes = []  # training epochs and scoring passes over the states
    for name in ("train_epoch", "outputs"):
        original = getattr(Trainer, name)
        monkeypatch.setattr(Trainer, name, lambda self, *a, _f=original, **k: (passes.append(1), _f(self, *a, **k))[1])
    monkeypatch.setattr(heads.prefix_cache, "available_memory", lambda: 0)  # 4 chunks kept: pools of 1
    disk = _finetune(tmp_path / "disk", *args)
    assert "do not fit in memory" in disk.output
    logs = [pd.read_csv(tmp_path / name / run / "mlp3" / "training_log.csv")
            for name in ("memory", "disk")]
    pd.testing.assert_series_equal(logs[0]["val_loss"], logs[1]["val_loss"])  # the same states
    pd.testing.assert_series_equal(logs[0]["train_loss"], logs[1]["train_loss"])
    (read, chunks, strands_kept), = reads
    # each pass decodes each chunk about once (a row read alone would decode one or two each
    # time: pairs, 320 rows of 61 states in 5 chunks of 4,096), with room for only 4 kept
    assert chunks == (5 if kind == "pair" else 6) and len(passes) >= 5
    assert read <= len(passes) * (chunks + 1), (read, len(passes))
    assert strands_kept == ({0} if kind == "pair" else {0, 1})


def test_a_cache_that_does_not_fit_the_run_is_refused_naming_each_difference(tmp_path, inputs):
    out = tmp_path / "runs"
    # --unfreeze 2 trains both blocks of tiny-1k: it reads layer 0, and the cache holds layer 1
    result = fails_with("layer 1 (this run needs 0)", "finetune", *TINY, *inputs["seq"],
                        "--label", "y", *TRAIN[2:], "--unfreeze", "2", "--cache",
                        inputs["seq_states"], "--out", out)
    assert "--per-position --layer 0" in result.output  # the embed command that fits
    # other weights, and pairs where the run reads single sequences
    result = fails_with("does not fit this run", "finetune", "--model", "tiny-1k", "--random-init",
                        "--init-seed", "1", *inputs["seq"], "--label", "y", *TRAIN,
                        "--cache", inputs["pair_states"], "--out", out)
    assert "weights" in result.output and "variant pairs" in result.output, result.output
    fails_with("--unfreeze all leaves none frozen", "finetune", *TINY, *inputs["seq"], "--label",
               "y", *TRAIN[2:], "--unfreeze", "all", "--cache", inputs["seq_states"], "--out", out)
    result = fails_with("forward strand only", "finetune", *TINY, *inputs["seq"], "--label", "y",
                        *TRAIN, "--rc-augment", "--cache", inputs["seq_states"], "--out", out)
    assert "--per-position --layer 1 --rc" in result.output
    fails_with("--shuffle-reads", "finetune", *TINY, *inputs["seq"], "--label", "y", *TRAIN,
               "--shuffle-reads", "--cache", inputs["seq_rc_states"], "--out", out)
    assert not out.exists()  # refused before anything was written


def test_a_cache_of_other_windows_or_tokens_is_refused(tmp_path, inputs):
    folder = inputs["folder"]
    window = tmp_path / "window.zarr"
    assert invoke("embed", *TINY, *inputs["seq"], *STATES, "--center-window", "16",
                  "--out", window).exit_code == 0
    fails_with("cover part of each row", "finetune", *TINY, *inputs["seq"], "--label", "y",
               *TRAIN, "--cache", window, "--out", tmp_path / "runs")
    # the same ids with other sequences
    table = pd.read_csv(folder / "seqs.csv")
    table["seq"] = table["seq"].str[::-1]
    other = tmp_path / "other.csv"
    table.to_csv(other, index=False)
    fails_with("other sequences than this run's input", "finetune", *TINY, "--input", other,
               "--seq-col", "seq", "--id-col", "id", "--label", "y", *TRAIN,
               "--cache", inputs["seq_states"], "--out", tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_needed_layer_counts_the_frozen_blocks():
    assert needed_layer("1", 4) == 3 and needed_layer("0", 4) == 4 and needed_layer("4", 4) == 0


def test_resume_after_kill_reading_the_cache_is_exact(tmp_path, inputs):
    common = [*TINY, *map(str, inputs["seq"]), "--label", "y", *TRAIN[:2], "--epochs", "3",
              "--batch-size", "8", "--quiet", "--no-plots", "--cache", str(inputs["seq_states"])]
    killed_and_straight_runs(tmp_path, common, "finetune-mean-u1")


def test_embed_says_the_states_footprint_and_refuses_a_disk_without_room(tmp_path, inputs, monkeypatch):
    import shutil
    from collections import namedtuple

    out = tmp_path / "states.zarr"
    result = invoke("embed", *TINY, *inputs["seq"], *STATES[:-1], "--out", out)
    rows = pd.read_csv(inputs["folder"] / "seqs.csv")
    positions = int((rows["seq"].str.len() + 1).sum())  # each sequence and its [SEP]
    assert f"per-position states: {positions:,} positions x 128 x float32" in result.output
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(10**6, 10**6 - 1000, 1000))
    small = tmp_path / "small.zarr"
    fails_with("the disk has 1.0 KB free", "embed", *TINY, *inputs["seq"], *STATES, "--out", small)
    assert not small.exists()  # refused before the store was made


@pytest.mark.cuda
def test_states_held_in_gpu_memory_gather_as_on_the_host(inputs):
    """On CUDA the states live in GPU memory (when they fit in half of what is free), and a
    batch gathered there equals the one gathered on the host."""
    from cache.store import Cache
    from heads.prefix_cache import PrefixStates

    cache = Cache.open(inputs["pair_states"])
    rows = np.arange(cache.n_rows)[:, None]
    messages = []
    on_gpu = PrefixStates(cache, rows, torch.device("cuda"), say=messages.append)
    on_host = PrefixStates(cache, rows, torch.device("cpu"), say=messages.append)
    assert "GPU memory" in messages[0] and on_gpu.values.device.type == "cuda"
    units = np.array([5, 0, 17, 3])
    a, b = on_gpu.gather(units, 128), on_host.gather(units, 128)
    assert a.device.type == "cuda"
    assert torch.equal(a.cpu(), b)
    assert b[1, int(on_host.lengths[0]):].abs().sum() == 0  # zero past the row's length


def test_a_gathered_batch_is_each_rows_states_then_zeros(inputs):
    from cache.store import Cache
    from heads.prefix_cache import PrefixStates

    cache = Cache.open(inputs["seq_states"])
    states = PrefixStates(cache, np.arange(cache.n_rows)[:, None], torch.device("cpu"),
                          say=lambda _m: None)
    units = np.array([7, 2, 150])
    batch = states.gather(units, 96)
    assert batch.shape == (3, 96, 128) and batch.dtype == torch.float32
    for k, row in enumerate(units):
        n = int(states.lengths[row])
        np.testing.assert_array_equal(batch[k, :n].numpy(), cache.positions(int(row)))
        assert batch[k, n:].abs().sum() == 0


def test_chunk_ordered_epochs_take_every_row_once_pool_by_pool_through_the_chunks():
    from heads.seqdata import chunk_ordered_batches

    rng = np.random.default_rng(0)
    n, batch = 700, 4  # pools of 128 rows
    chunks = np.sort(rng.integers(0, 90, n))  # rows written in order: chunk ids ascending
    lengths = rng.integers(10, 60, n)
    indices = rng.permutation(n)[:600]  # the training rows
    generator = torch.Generator().manual_seed(3)
    batches = chunk_ordered_batches(indices, lengths, chunks, batch, generator)
    taken = np.concatenate(batches)
    assert sorted(taken) == sorted(indices)  # each training row once
    runs = [c for k, c in enumerate(chunks[taken]) if k == 0 or c != chunks[taken][k - 1]]
    assert sorted(runs) == sorted(set(chunks[indices]))  # each chunk's rows in one stretch
    assert runs != sorted(runs)  # the chunks in shuffled order
    assert all(len(set(chunks[b])) == 1 for b in batches)  # pools (and batches) within a chunk
    wide = chunk_ordered_batches(indices, lengths, chunks, 16, torch.Generator().manual_seed(3), 90)
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in wide])
    assert spread < 5  # length-bucketed within a pool (random batches: ~45)
    again = chunk_ordered_batches(indices, lengths, chunks, batch, torch.Generator().manual_seed(3))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))  # seeded: resumable
    other = chunk_ordered_batches(indices, lengths, chunks, batch, torch.Generator().manual_seed(4))
    assert not np.array_equal(np.concatenate(other), taken)
    # groups of 8 consecutive chunks: a pool's rows come from one group, each group's pools
    # follow each other (the reader keeps a group's chunks meanwhile)
    grouped = chunk_ordered_batches(indices, lengths, chunks, batch, torch.Generator().manual_seed(3), 8)
    order = np.concatenate(grouped)
    assert sorted(order) == sorted(indices)
    runs = [g for k, g in enumerate(chunks[order] // 8) if k == 0 or g != chunks[order][k - 1] // 8]
    assert sorted(runs) == sorted(set(chunks[indices] // 8))  # each group in one stretch
    assert runs != sorted(runs)  # in shuffled order
    for b in grouped:
        assert len(set(chunks[b] // 8)) == 1


def test_embed_rc_stores_the_reverse_strands_states_as_embedding_it_alone_would(tmp_path, inputs):
    """positions/rc_values of a row are the per-position states of its reverse complement,
    in that sequence's own order: what a run gets from embedding the reversed table."""
    import os

    from cache.store import Cache
    from hyena_embed.variants import reverse_complement

    table = pd.read_csv(inputs["folder"] / "seqs.csv")
    table["seq"] = table["seq"].map(reverse_complement)
    reversed_csv = tmp_path / "reversed.csv"
    table.to_csv(reversed_csv, index=False)
    alone = tmp_path / "alone.zarr"
    assert invoke("embed", *TINY, "--input", reversed_csv, "--seq-col", "seq", "--id-col", "id",
                  *STATES, "--out", alone).exit_code == 0
    both, alone_cache = Cache.open(inputs["seq_rc_states"]), Cache.open(alone)
    forward = Cache.open(inputs["seq_states"])
    assert both.position_arrays == ["values", "rc_values"] and forward.position_arrays == ["values"]
    for row in (0, 7, 159):
        start, n = int(both.group["positions/start"][row]), int(both.group["positions/length"][row])
        np.testing.assert_allclose(both.position_values(start, n, "rc_values"),
                                   alone_cache.positions(row), atol=1e-4)
        np.testing.assert_allclose(both.positions(row), forward.positions(row), atol=1e-4)
    assert not np.allclose(both.positions(7), both.position_values(
        int(both.group["positions/start"][7]), int(both.group["positions/length"][7]), "rc_values"))
    # the footprint counts both strands; a window (elsewhere on the other strand) is refused
    result = invoke("embed", *TINY, *inputs["seq"], *STATES[:-1], "--rc", "--out", tmp_path / "f.zarr")
    rows = pd.read_csv(inputs["folder"] / "seqs.csv")
    positions = int((rows["seq"].str.len() + 1).sum())
    assert f"{positions:,} positions x 128 x float32 x 2 strands (--rc)" in result.output
    fails_with("--position-window/--center-window or --rc", "embed", *TINY, *inputs["seq"],
               *STATES, "--rc", "--center-window", "16", "--out", tmp_path / "w.zarr")
    assert not (tmp_path / "w.zarr").exists()
    # a lost chunk of the reverse strand is damage that verify names and a rerun mends
    os.remove(tmp_path / "f.zarr" / "positions" / "rc_values" / "c" / "1" / "0")
    assert "positions/rc_values missing or corrupt" in fails_with("problem", "verify", tmp_path / "f.zarr").output
    again = invoke("embed", *TINY, *inputs["seq"], *STATES[:-1], "--rc", "--out", tmp_path / "f.zarr")
    assert again.exit_code == 0 and "recomputing" in again.output
    assert invoke("verify", tmp_path / "f.zarr").exit_code == 0
