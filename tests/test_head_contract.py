"""The contract every registered head keeps, in the spirit of scikit-learn's
parametrize_with_checks: it fits, predicts finite values of the right shape, learns a planted
signal better than chance, saves without pickle, loads back, and predicts the same."""
import numpy as np
import pytest

from heads.registry import head_names, make_head
from heads.saving import load_head, save_head

CASES = [(name, "regression") for name in head_names("regression")] + \
        [(name, "classification") for name in head_names("classification")]


def planted(task, n=240, d=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    signal = x[:, 0] - 0.5 * x[:, 1]
    if task == "regression":
        return x, (signal + 0.1 * rng.normal(size=n)).astype(np.float32)
    return x, np.where(signal > 0, "up", "down")


@pytest.mark.parametrize("name,task", CASES, ids=[f"{n}-{t}" for n, t in CASES])
def test_head_fits_predicts_saves_loads_and_predicts_the_same(tmp_path, name, task):
    x, y = planted(task)
    train, test = slice(0, 180), slice(180, None)
    head = make_head(name, task, seed=0, device="cpu", epochs=60)
    assert head.fit(x[train], y[train], x[test], y[test]) is head  # every head takes a validation set
    before = head.predict(x[test])
    assert len(before) == 60
    if task == "regression":
        before = np.asarray(before, dtype=np.float64).reshape(60)
        assert np.isfinite(before).all()
        assert np.corrcoef(before, y[test])[0, 1] > 0.5, name  # learned, not a constant
    else:
        assert set(np.asarray(before).tolist()) <= {"up", "down"}
        assert np.mean(np.asarray(before) == y[test]) > 0.7, name
    model_file = save_head(head, tmp_path)
    assert not list(tmp_path.glob("*.joblib")) and not list(tmp_path.glob("*.pkl"))
    after = load_head(tmp_path, model_file).predict(x[test])
    if task == "regression":
        np.testing.assert_allclose(np.asarray(after, np.float64).reshape(60), before, rtol=1e-5, atol=1e-6)
    else:
        assert np.asarray(after).tolist() == np.asarray(before).tolist()


def test_an_unknown_head_is_named_unknown():
    with pytest.raises(ValueError, match="unknown head 'ridgee'"):
        make_head("ridgee", "regression")
    with pytest.raises(ValueError, match="does not do classification"):
        make_head("ridge", "classification")
