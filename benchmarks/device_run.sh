#!/usr/bin/env bash
# One call on the GPU machine: the CUDA tests of the fused path first, then the step-cost benchmark (both shapes).
# Logs and the JSON go to $OUT (default /tmp/hyft-out). Run from the repository root (or a copy of src/, tests/,
# benchmarks/ and pyproject.toml).
set -u -o pipefail
OUT=${OUT:-/tmp/hyft-out}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PY:-python3}
{ date -u; nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.limit --format=csv
  $PY -c "import torch, triton, transformers, peft; print('torch', torch.__version__, 'triton', triton.__version__,
'transformers', transformers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee "$OUT/env.log"
timeout "${TEST_TIMEOUT:-170}" $PY -m pytest tests/zo/test_kernels.py -q -p no:cacheprovider -W ignore -rs \
    --durations=10 2>&1 | tee "$OUT/tests.log"
timeout "${BENCH_TIMEOUT:-300}" $PY benchmarks/step_cost.py --configs "${CONFIGS:-opt-1.3b:16x128,llama-7b:8x256}" \
    ${SWEEP---sweep} --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
