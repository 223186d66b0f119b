"""How torch heads train: raw-scale inputs, the folded LayerNorm, sparse k-mer rows through the
first layer, early stopping's patience."""
import numpy as np
import pytest


def test_a_torch_head_on_raw_inputs_keeps_their_relative_sizes_and_still_learns_small_ones():
    """scale 'raw': centred, then one common divisor (not each column's): rare features stay
    small relative to common ones, yet frequencies of ~0.01 are no harder to fit than unit ones."""
    from heads.registry import make_head

    rng = np.random.default_rng(0)
    X = rng.poisson(2.0, (1500, 40)) * np.linspace(0.002, 0.02, 40)  # k-mer-frequency-like sizes
    y = X @ rng.normal(size=40) * 50 + rng.normal(0, 0.05, 1500)
    head = make_head("linear", "regression", params={"scale": "raw", "lr": 3e-3, "weight_decay": 1e-4},
                     epochs=60).fit(X[:1200], y[:1200], X[1200:1350], y[1200:1350])
    assert np.unique(head.x_std_).size == 1  # one divisor for every column
    assert head.x_std_[0] == pytest.approx(np.sqrt((X[:1200].std(axis=0) ** 2).mean()), rel=1e-3)
    pred = head.predict(X[1350:])
    assert np.corrcoef(pred, y[1350:])[0, 1] > 0.95


def test_layer_norm_head_trains_on_rows_normalised_once_with_the_same_function_and_gradients():
    import torch

    from heads.torch_mlp import _trained_form, build_mlp

    torch.manual_seed(0)
    model = build_mlp("mlp2_ln", 40, 2).eval()  # eval: dropout off, both forms comparable
    with torch.no_grad():  # a trained norm: weight and bias away from 1 and 0
        model[0].weight.uniform_(0.5, 2.0)
        model[0].bias.normal_()
    x, xv = torch.randn(64, 40) * 3 + 1, torch.randn(10, 40)
    shared = {}
    trained, xn, xvn = _trained_form(model, x, xv, shared)
    assert {id(p) for p in trained.parameters()} == {id(p) for p in model.parameters()}
    assert _trained_form(model, x, xv, shared)[1] is xn  # normalised once per shared encoding
    torch.testing.assert_close(trained(xvn), model(xv), rtol=1e-5, atol=1e-5)
    target = torch.randn(64, 2)
    grads = []
    for net, rows in ((model, x), (trained, xn)):
        net.zero_grad()
        torch.nn.functional.mse_loss(net(rows), target).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    plain = build_mlp("mlp2", 40, 2)
    assert _trained_form(plain, x, xv, shared)[0] is plain  # nothing to take out


def _sparse_counts(rng, n, d=300):
    """Count-like rows, ~8% non-zero, with a few always-present columns (as k-mer tables)."""
    X = (rng.random((n, d)) < 0.06) * rng.integers(1, 4, (n, d))
    X[:, :6] = rng.integers(20, 40, (n, 6))
    return X.astype(np.float32)


@pytest.mark.parametrize("arch,scale", [("mlp2", "raw"), ("mlp3", "standard"), ("mlp2_ln", "raw"),
                                        ("mlp2_ln", "standard"), ("linear", "raw")])
def test_sparse_rows_give_the_dense_networks_outputs_and_gradients(arch, scale):
    """A first layer on SparseRows (x / std minus mean / std, with mlp2_ln's per-row norm) is
    the dense network on (x - mean) / std: same outputs and parameter gradients, same
    parameters, and the model keeps working on dense rows afterwards."""
    import torch

    from heads.sparse_rows import SparseRows
    from heads.torch_mlp import TorchMLPHead, _trained_form, build_mlp

    rng = np.random.default_rng(0)
    X, Xv = _sparse_counts(rng, 96), _sparse_counts(rng, 20)
    head = TorchMLPHead(arch=arch, scale=scale)
    head._prepare(X)
    dense, dense_val = head._encode(X), head._encode(Xv)
    rows, rows_val = (SparseRows.encode(A, head.x_mean_, head.x_std_) for A in (X, Xv))
    torch.manual_seed(0)
    model = build_mlp(arch, X.shape[1], 2).eval()  # eval: dropout off
    if arch == "mlp2_ln":
        with torch.no_grad():
            model[0].weight.uniform_(0.5, 2.0)
            model[0].bias.normal_()
    reference = build_mlp(arch, X.shape[1], 2).eval()
    reference.load_state_dict(model.state_dict())
    trained, xs, xvs = _trained_form(model, rows, rows_val, {})
    assert {id(p) for p in trained.parameters()} == {id(p) for p in model.parameters()}
    torch.testing.assert_close(trained(xvs[0:20]), reference(dense_val), rtol=1e-5, atol=1e-5)
    order = torch.as_tensor(rng.permutation(96)[:40])
    target = torch.randn(40, 2)
    torch.nn.functional.mse_loss(trained(xs.take(order)), target).backward()
    torch.nn.functional.mse_loss(reference(dense[order]), target).backward()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(model(dense_val), reference(dense_val), rtol=1e-5, atol=1e-5)


def test_sparse_training_is_chosen_for_sparse_inputs_and_fits_as_the_dense_path(monkeypatch):
    """mlp2 on count rows trains on SparseRows (CPU), the same run as the dense path to float
    rounding; dense features, the linear head and the CNN keep dense rows; the fitted
    network's weights are contiguous again (as saved)."""
    import torch

    from heads.cnn import CNNHead
    from heads.sparse_rows import SparseRows
    from heads.torch_mlp import TorchMLPHead

    rng = np.random.default_rng(1)
    X = _sparse_counts(rng, 400)
    y = X[:, 6:30].sum(axis=1) + rng.normal(size=400)
    cpu = torch.device("cpu")
    assert TorchMLPHead(arch="mlp2")._trains_sparse(X, cpu) == torch.backends.mkl.is_available()
    assert not TorchMLPHead(arch="mlp2")._trains_sparse(rng.normal(size=(50, 30)), cpu)
    assert not TorchMLPHead(arch="linear")._trains_sparse(X, cpu)
    assert not TorchMLPHead(arch="mlp2")._trains_sparse(X, torch.device("meta"))
    assert not CNNHead()._trains_sparse(X, cpu)

    def fit(sparse):
        head = TorchMLPHead(arch="mlp2", epochs=6, patience=100, device="cpu")
        # pinned: without MKL (ARM builds) the sparse path is off by default, but it works
        monkeypatch.setattr(head, "_trains_sparse", lambda X, device: sparse)
        head.begin(X[:320], y[:320], X[320:], y[320:])
        assert isinstance(head._run["x"], SparseRows) == sparse
        head.advance(6)
        return head.end()

    sparse, dense = fit(True), fit(False)
    assert all(p.is_contiguous() for p in sparse.model_.parameters())
    np.testing.assert_allclose([h["val_loss"] for h in sparse.history_],
                               [h["val_loss"] for h in dense.history_], rtol=1e-4)
    np.testing.assert_allclose(sparse.predict(X[320:]), dense.predict(X[320:]), rtol=1e-3, atol=1e-3)


def test_early_stopping_patience_needs_a_real_gain_but_keeps_the_best_weights(monkeypatch):
    """A validation loss that creeps down by less than MIN_IMPROVEMENT (relative) each epoch
    does not reset the patience; the weights kept are still the lowest loss's."""
    import heads.torch_mlp
    from heads.torch_mlp import TorchMLPHead

    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 6)).astype(np.float32)
    y = X[:, 0] + 0.1 * rng.normal(size=200)

    def fit(min_improvement):
        monkeypatch.setattr(heads.torch_mlp, "MIN_IMPROVEMENT", min_improvement)
        # a step size so small that every epoch lowers the loss by ~0.03%
        return TorchMLPHead(arch="linear", lr=3e-5, epochs=30, patience=4).fit(
            X[:150], y[:150], X[150:], y[150:])

    creeping = fit(0.0)  # every gain counts: all 30 epochs run
    assert len(creeping.history_) == 30
    losses = np.array([h["val_loss"] for h in creeping.history_])
    gains = -np.diff(losses) / losses[:-1]
    assert (gains > 1e-4).all() and (gains < 1e-3).all()
    stopped = fit(1e-3)  # patience 4 after the first epoch, best weights the last epoch's
    assert len(stopped.history_) == 5 and stopped.best_epoch_ == 5
