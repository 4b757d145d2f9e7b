#!/usr/bin/env bash
# The probe study of docs/results.md: examples/probe_smollm2.yaml at zo.lr 1e-6 (the paper's), 1e-5 and 1e-4.
# Resumable: a run with run.json is done, one with a checkpoint is resumed, others start; run it again after any
# interruption. Usage: bash benchmarks/run_probe_study.sh OUT_DIR [extra hyft train overrides...]
# In the background, surviving the shell: nohup bash benchmarks/run_probe_study.sh runs/probe > runs/probe.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: run_probe_study.sh OUT_DIR [overrides...]}
shift
hyft=${HYFT:-.venv/bin/hyft}
for lr in ${PROBE_LRS:-1e-6 1e-5 1e-4}; do
  dir="$out/zo$lr"
  if [ -f "$dir/run.json" ]; then echo "[study] $dir: done"; continue; fi
  if ls "$dir"/checkpoints/step-*/COMPLETE >/dev/null 2>&1; then
    echo "[study] $dir: resuming"
    "$hyft" train --resume "$dir" || exit $?
  else
    echo "[study] $dir: starting"
    "$hyft" train --config examples/probe_smollm2.yaml --zo.lr "$lr" --train.output_dir "$dir" --train.overwrite true "$@" || exit $?
  fi
done
echo "[study] all done"
