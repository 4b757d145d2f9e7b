#!/usr/bin/env bash
# Reproduces the method comparison of docs/results.md (examples/compare_smollm2.yaml): 7 methods x 4 tasks x 2 seeds
# on SmolLM2-135M-Instruct, every (task, method, seed) cell in a fresh process, resumable (rerun the same command to
# finish an interrupted study; finished cells are skipped).
#
#   HYFT_DATA_DIR=/path/to/data bash benchmarks/run_compare.sh [OUT_DIR] [hyft compare options...]
#
# OUT_DIR (default runs/compare_smollm2) receives everything: env.txt (versions, GPU, commit), compare.log,
# cells/<task>/<method>/seed<k>/ (config, metrics, curves, run.json), compare.csv, compare.md, compare.json, plots/.
# Environment:
#   HYFT_DATA_DIR  task data folder holding sst2/, rte/, copa/, winogrande/ (required)
#   MODEL          model to use instead of 'smollm2-135m' (hub id, HF directory or .gguf file)
#   CONFIG         base config (default examples/compare_smollm2.yaml)
#   PYTHON         interpreter with torch, transformers and peft (default python3)
# Extra options go to `hyft compare`, e.g. --tasks sst2 --seeds 0 --train.steps 200 --methods lora,hybrid-lora
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-runs/compare_smollm2}"
[ $# -gt 0 ] && shift
DATA="${HYFT_DATA_DIR:-}"
if [ -z "$DATA" ] || [ ! -d "$DATA/sst2" ]; then
  echo "run_compare.sh: set HYFT_DATA_DIR to the task data folder (it must hold sst2/, rte/, ...); got '${DATA}'" >&2
  exit 2
fi
PY="${PYTHON:-python3}"
CONFIG="${CONFIG:-$ROOT/examples/compare_smollm2.yaml}"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "config: $CONFIG"; echo "data: $DATA"; echo "model: ${MODEL:-smollm2-135m}"; echo "args: $*"
  "$PY" -c "import platform, torch, transformers, peft; print('python', platform.python_version(), '| torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| cuda', torch.cuda.is_available())"
  nvidia-smi -L 2>/dev/null || echo "no GPU (nvidia-smi not found)"
  nproc 2>/dev/null | sed 's/^/cpus: /'
} > "$OUT/env.txt"
cat "$OUT/env.txt"
set -o pipefail
"$PY" -m hyft compare --config "$CONFIG" --out "$OUT" --data.data_dir "$DATA" ${MODEL:+--model.name "$MODEL"} "$@" \
  2>&1 | tee -a "$OUT/compare.log"
