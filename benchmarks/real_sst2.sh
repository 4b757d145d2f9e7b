#!/usr/bin/env bash
# Issue-2 evidence: SmolLM2-135M on SST-2 (1,000 training examples, all 872 GLUE dev sentences as the test split),
# zero-shot vs lora vs hybrid at the same number of steps. Usage: bash benchmarks/real_sst2.sh [STEPS] [OUT]
set -euo pipefail
STEPS=${1:-100}
OUT=${2:-runs/real_sst2}
HYFT=${HYFT:-.venv/bin/hyft}
common=(--data.n_train 1000 --data.n_dev 0 --data.n_test 872 --data.max_length 96 --train.steps "$STEPS"
        --train.batch_size 16 --train.log_every 10 --train.progress false --train.overwrite true
        --fo.optimizer adamw --fo.lr 1e-3)
$HYFT train --method lora --train.output_dir "$OUT/lora" "${common[@]}"
$HYFT train --method hybrid --zo.lr 1e-6 --zo.mu 1e-3 --train.eval_before false --train.output_dir "$OUT/hybrid" "${common[@]}"
