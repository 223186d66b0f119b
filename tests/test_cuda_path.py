"""The fused CUDA kernels (hyena_embed/cuda_path.py) compute what the backbone's own path does.
On CPU they run under Triton's interpreter (TRITON_INTERPRET=1, in a subprocess, since Triton
reads it when the kernels are defined); tests/test_cuda.py runs them on a GPU."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from hyena_embed.backbone import HyenaDNA
from hyena_embed.config import HyenaConfig

from conftest import REPO


def random_biased_model(d_model=32, n_layer=2, l_max=300, seed=0) -> HyenaDNA:
    """A random model whose biases, skip terms and norms are all non-zero: a kernel that drops
    any term of the maths gives other numbers."""
    torch.manual_seed(seed)
    model = HyenaDNA(HyenaConfig(d_model=d_model, n_layer=n_layer, d_inner=4 * d_model, l_max=l_max))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path[:0] = [{repo!r}, {tests!r}]
    from test_cuda_path import random_biased_model
    from hyena_embed import cuda_path
    from helpers import assert_close_to_reference
    model = random_biased_model()
    ids = torch.randint(7, 12, (3, 37))
    for layer in (0, 1, 2, -1):
        with torch.inference_mode():
            model.set_kernels(False)
            ref = model(ids, layer=layer)
            model.set_kernels(True)
            assert cuda_path.applies(model, ids)
            got = model(ids, layer=layer)
        assert_close_to_reference(got, ref, msg=f"layer {{layer}}")
    # the gates kernel leaves zeros past the sequence: the FFT reads the padding it wrote
    z = torch.randn(3 * 4, 2, 5)
    x0, v = cuda_path.short_conv_gates(z, torch.randn(12, 1, 3), torch.randn(12), torch.randn(12), 16)
    assert v.shape == (4, 2, 16) and bool((v[..., 5:] == 0).all()) and x0.shape == (4, 2, 5)
    print("kernels ok")
""")


def test_fused_kernels_match_the_backbone_under_the_triton_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    script = SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "kernels ok" in done.stdout, done.stderr[-3000:]


def test_the_fused_path_is_only_taken_for_frozen_inference():
    from hyena_embed import cuda_path

    model = random_biased_model()
    ids = torch.randint(7, 12, (2, 10))
    assert not cuda_path.applies(model, ids)  # a CPU tensor, no interpreter
    if not torch.cuda.is_available() or not cuda_path.available():
        return
    ids = ids.cuda()
    model.cuda()
    with torch.inference_mode():
        assert cuda_path.applies(model, ids)
        model.train()
        assert not cuda_path.applies(model, ids)  # dropout must run
        model.eval().set_fast_path(False)
        assert not cuda_path.applies(model, ids)  # the port's ops, for the benchmark
    assert not cuda_path.applies(model.set_fast_path(True), ids)  # autograd on
