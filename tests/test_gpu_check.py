"""benchmarks/gpu_check.py in its CPU quick mode: the GPU proof script cannot rot unnoticed."""
import json
import sys

from conftest import REPO


def test_gpu_check_runs_green_on_cpu_quick(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    code = gpu_check.main(["--device", "cpu", "--quick", "--json", str(tmp_path / "r.json")])
    result = json.loads((tmp_path / "r.json").read_text())
    failed = [c for c in result["checks"] if not c["ok"]]
    assert code == 0 and not failed, failed
    names = " ".join(c["check"] for c in result["checks"])
    for part in ("fixtures", "batch invariance", "fit-head", "finetune --unfreeze 2"):
        assert part in names
    rows = result["throughput"]
    assert {r["nt"] for r in rows} == {500, 1000}
    assert all(r["pooled tok/s"] > 0 and r["port tok/s"] > 0 for r in rows)
    assert "passed, 0 failed" in capsys.readouterr().out
