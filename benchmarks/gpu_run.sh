#!/usr/bin/env bash
# The one GPU command (issue 19): run on the lent GPU machine from the repo root, with the GPU
# image's missing wheels and the reference fixtures copied into .gpu/ (an ignored folder, carried):
#   mkdir -p .gpu && cp -r ../shared/wheels-gpu .gpu/whl && cp -r ../shared/fixtures/hyena_reference .gpu/fixtures
#   bash benchmarks/gpu_run.sh [out-folder]
# Prints the forward/loop throughput table, the test suite's result with CUDA visible, and
# the CLI's end-to-end rate; logs and JSON land in the out folder.
set -u
OUTDIR=${1:-${OUT:-/tmp/gpu_run}}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
if ! python3 -c "import zarr, lightgbm, skops" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export HYENA_FIXTURES=$PWD/.gpu/fixtures
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv
stage=${STAGES:-"tests forward cli"}
if [[ $stage == *tests* ]]; then
  # -rfE: every failure's name in the summary; README blocks run on CPU anyway (the suite pins
  # "auto" to the CPU) and take minutes: ${PYTEST_EXTRA} may deselect them
  timeout ${TESTS_S:-200} python3 -m pytest -v -rfE -n ${WORKERS:-14} --timeout 150 ${PYTEST_EXTRA:-} 2>&1 \
    | grep -v "PytestBenchmarkWarning\|warner(" | tee "$OUTDIR/pytest.log" | grep -E "FAILED|ERROR|passed|failed" | tail -40
fi
if [[ $stage == *forward* ]]; then
  timeout ${FORWARD_S:-170} python3 benchmarks/cuda_forward.py --json "$OUTDIR/cuda_forward.json" 2>&1 | tee "$OUTDIR/cuda_forward.log"
fi
if [[ $stage == *cli* ]]; then
  python3 - <<'PY'
import numpy as np, pandas as pd
rng = np.random.default_rng(0)
for n, nt in ((20000, 1000), (2000, 8000)):
    seqs = ["".join(s) for s in rng.choice(list("ACGT"), size=(n, nt))]
    pd.DataFrame({"id": [f"r{i}" for i in range(n)], "seq": seqs}).to_parquet(f"/tmp/in_{nt}.parquet")
    if nt == 1000:
        pd.DataFrame({"id": [f"r{i}" for i in range(4000)], "seq": seqs[:4000]}).to_parquet("/tmp/in_pp.parquet")
PY
  # the disk's write rate, for the per-position target (2 GiB, flushed)
  dd if=/dev/zero of=/tmp/dd.bin bs=16M count=128 conv=fdatasync 2>&1 | tail -1; rm -f /tmp/dd.bin
  for nt in 1000 8000; do
    for model in small-32k tiny-1k; do
      [[ $model == tiny-1k && $nt == 8000 ]] && continue
      started=$(date +%s%N)
      timeout ${CLI_S:-60} python3 cli.py embed --model $model --random-init --device cuda --input /tmp/in_$nt.parquet \
        --seq-col seq --id-col id --out /tmp/cli_${model}_$nt.zarr 2>&1 | grep -v "RANDOM" | tail -3
      echo "CLI $model ${nt}nt wall $(( ($(date +%s%N) - started) / 1000000 )) ms"
    done
  done
  started=$(date +%s%N)
  timeout ${CLI_S:-60} python3 cli.py embed --model small-32k --random-init --device cuda --input /tmp/in_pp.parquet \
    --seq-col seq --id-col id --per-position --out /tmp/cli_pp.zarr 2>&1 | grep -v "RANDOM" | tail -2
  echo "CLI small-32k per-position 4000 x 1kb wall $(( ($(date +%s%N) - started) / 1000000 )) ms; $(du -sh /tmp/cli_pp.zarr | cut -f1)"
fi
if [[ $stage == *check* ]]; then
  timeout ${CHECK_S:-200} python3 benchmarks/gpu_check.py ${CHECK_ARGS:-} --json "$OUTDIR/gpu_check.json" 2>&1 | tee "$OUTDIR/gpu_check.log" | tail -30
fi
