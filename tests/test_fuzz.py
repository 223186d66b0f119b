"""Issue 21's fuzz test: hundreds of random mutations of a real head folder (skops, LightGBM,
torch) and of a real cache's metadata, each run through predict / verify / fit-head in a child
process with a time and memory limit. Every outcome must be exit 0 with whole output, or a
one-line error: never a signal, a hang or a traceback. Seeded: a failure names its case."""
import random
import shutil

import pandas as pd

from mutations import mutate_file

HEADS = {"rf": ["head.skops", "head.json", "config.json"],
         "lightgbm": ["lightgbm_0.txt", "head.json", "config.json"],
         "mlp2": ["head.safetensors", "head.json", "config.json"]}
CASES_PER_HEAD = 70
CACHE_CASES = 200


def _describe(outcome):
    return (f"exit {outcome.exit_code}, signal {outcome.signal}, hung {outcome.hung}: "
            f"{outcome.output[-1500:]}")


def test_mutated_head_folders_never_crash_hang_or_trace(world, tmp_path, isolated):
    cases, folders = [], []
    for head, files in HEADS.items():
        for number in range(CASES_PER_HEAD):
            rng = random.Random(f"{head}-{number}")
            folder = tmp_path / f"{head}-{number}"
            shutil.copytree(world / "runs" / "mean" / head, folder)
            for _ in range(rng.choice([1, 1, 2])):
                mutate_file(folder / rng.choice(files), rng)
            folders.append(folder)
            cases.append(["predict", "--head-dir", folder, "--cache", world / "c.zarr",
                          "--out", folder / "p.csv"])
    outcomes = isolated.run_many(cases, timeout=90, memory=2 << 30, workers=2,
                                 env={"HYENA_EMBED_DEBUG": ""})
    bad = [f"{folder.name}: {_describe(o)}" for folder, o in zip(folders, outcomes) if not o.clean]
    assert not bad, "\n\n".join(bad[:5])
    for folder, outcome in zip(folders, outcomes):
        if outcome.exit_code == 0:  # whole output: a prediction for every row
            table = pd.read_csv(folder / "p.csv")
            assert len(table) == 80, folder.name
    assert sum(o.exit_code != 0 for o in outcomes) > len(outcomes) // 4  # the damage was seen


def test_mutated_cache_metadata_never_crashes_hangs_or_traces(world, tmp_path, isolated):
    reference = sorted(p.relative_to(world / "c.zarr") for p in (world / "c.zarr").rglob("zarr.json"))
    cases, names = [], []
    for number in range(CACHE_CASES):
        rng = random.Random(f"cache-{number}")
        cache = tmp_path / f"c{number}.zarr"
        shutil.copytree(world / "c.zarr", cache)
        target = rng.choice(reference)
        mutate_file(cache / target, rng)
        names.append(f"c{number}: {target}")
        command = rng.choice(["verify", "fit-head", "predict"])
        if command == "verify":
            cases.append(["verify", cache])
        elif command == "fit-head":
            cases.append(["fit-head", "--cache", cache, "--label", "y", "--head", "ridge",
                          "--no-plots", "--out", tmp_path / f"r{number}"])
        else:
            cases.append(["predict", "--head-dir", world / "runs" / "mean" / "mlp2", "--cache",
                          cache])
    outcomes = isolated.run_many(cases, timeout=90, memory=2 << 30, workers=2,
                                 env={"HYENA_EMBED_DEBUG": ""})
    bad = [f"{name}: {_describe(o)}" for name, o in zip(names, outcomes) if not o.clean]
    assert not bad, "\n\n".join(bad[:5])
