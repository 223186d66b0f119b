"""The CUDA paths, each on the device and in the precision it names (issue 19). Skipped where
no CUDA device is visible; benchmarks/gpu_run.sh runs them on the lent GPU."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cache.store import Cache
from hyena_embed.checkpoints import build_from_directory
from hyena_embed.devices import DEVICE_ENV
from hyena_embed.embedder import Embedder
from hyena_embed.loading import LoadedModel
from hyena_embed.precision import exact_float32
from hyena_embed.variants import VariantPair
from hyena_embed.zeroshot import score_pairs

from conftest import REPO
from helpers import assert_close_to_reference, make_records, random_dna, write_fasta
from test_cuda_path import random_biased_model

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")
REDUCED_TOL = 1e-2  # fp16/bf16 autocast against float32, relative to the largest value


def relative(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", ["tiny-1k", "tiny-1k-d256-ckpt"])
def test_fixtures_in_float32_on_cuda_at_the_cpu_tolerance(fixtures_dir, name):
    expected = load_file(fixtures_dir / name / "expected.safetensors")
    model, _ = build_from_directory(fixtures_dir / name / "hf")
    model = model.to(CUDA).eval()
    i = 0
    while f"seq{i}.input_ids" in expected:
        ids = expected[f"seq{i}.input_ids"][None].to(CUDA)
        with torch.no_grad(), exact_float32():  # the backbone path, every state
            states = model(ids, output_hidden_states=True)
        for j, state in enumerate(states):
            assert_close_to_reference(state[0].cpu(), expected[f"seq{i}.hidden_states.{j}"])
        with torch.inference_mode(), exact_float32():  # the fused kernels, final state
            fused = model(ids)
        assert_close_to_reference(fused[0].cpu(), expected[f"seq{i}.last_hidden_state"])
        i += 1
    assert i >= 2


@pytest.mark.parametrize("layer", [0, 1, 2, 3, -1])
def test_fused_kernels_equal_the_backbone_path_in_float32(layer):
    model = random_biased_model(d_model=64, n_layer=3, l_max=4096).to(CUDA)
    ids = torch.randint(7, 12, (5, 1537), device=CUDA)
    with torch.inference_mode(), exact_float32():
        model.set_kernels(False)
        ref = model(ids, layer=layer)
        model.set_kernels(True)
        got = model(ids, layer=layer)
    assert_close_to_reference(got.cpu(), ref.cpu())


@pytest.mark.parametrize("precision", ["float16", "bfloat16", "auto"])
def test_reduced_precision_pooled_within_tolerance_of_float32(precision):
    model = random_biased_model(d_model=128, n_layer=2, l_max=1026)
    rng = np.random.default_rng(0)
    rows = [rng.integers(7, 11, size=int(n)) for n in rng.integers(50, 1000, 24)]
    ref = Embedder(model, CUDA, "float32").pooled(rows, ["mean", "last"])
    got = Embedder(model, CUDA, precision).pooled(rows, ["mean", "last"])
    for method in ("mean", "last"):
        assert relative(got[method], ref[method]) < REDUCED_TOL, method


def _embed(tmp_path, fasta, device, name):
    out = tmp_path / name
    cmd = [sys.executable, str(REPO / "cli.py"), "embed", "--model", "tiny-1k", "--random-init",
           "--quiet", "--pool", "mean", "--pool", "max", "--per-position", "--center-window", "8",
           "--chunk-rows", "8", "--input", str(fasta), "--out", str(out), "--device", device]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop(DEVICE_ENV, None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return Cache.open(out)


def test_cli_embed_on_cuda_matches_the_cpu_cache(tmp_path):
    fasta = write_fasta(tmp_path / "in.fa", make_records(60, lo=200, hi=1000, seed=4))
    on_cpu, on_cuda = _embed(tmp_path, fasta, "cpu", "cpu.zarr"), _embed(tmp_path, fasta, "cuda", "cuda.zarr")
    assert on_cuda.complete and list(on_cuda.ids) == list(on_cpu.ids)
    assert on_cuda.attrs["settings"]["precision"] == "float16"
    for method in ("mean", "max"):
        assert relative(on_cuda.pooled(method), on_cpu.pooled(method)) < REDUCED_TOL
    positions = on_cuda.group["positions/values"][:].astype(np.float64)
    assert relative(positions, on_cpu.group["positions/values"][:]) < REDUCED_TOL


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_finetune_on_cuda_trains_with_finite_falling_losses(tmp_path, precision):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    message = gpu_check.check_finetune(CUDA, precision, tmp_path, epochs=4)
    assert "train loss" in message


def test_score_variants_on_cuda_match_the_cpu(fixtures_dir):
    model, facts = build_from_directory(fixtures_dir / "tiny-1k" / "hf")
    loaded = LoadedModel(model.eval(), "tiny-1k-fixture", "fixture", facts["weights_sha256"])
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(6):
        ref = random_dna(rng, 120)
        alt = ref[:60] + ("A" if ref[60] != "A" else "C") + ref[61:]
        pairs.append(VariantPair(f"p{i}", ref, alt, 60, 60, ref[60], alt[60]))
    on_cpu = score_pairs(loaded, pairs, device="cpu")
    exact = score_pairs(loaded, pairs, device="cuda", precision="float32")
    reduced = score_pairs(loaded, pairs, device="cuda")
    for score in on_cpu:
        np.testing.assert_allclose(exact[score], on_cpu[score], rtol=1e-3, atol=1e-4, err_msg=score)
        scale = np.abs(on_cpu[score]).max() + 1e-6
        assert np.abs(reduced[score] - on_cpu[score]).max() < 5e-2 * scale + 1e-3, score
