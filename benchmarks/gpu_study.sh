#!/usr/bin/env bash
# The GPU study of issue 13 (docs/results.md): examples/study_gpu.yaml on one lent GPU, in one prepared script.
# The device machine has no model weights, no task data and installs nothing, and each call carries at most 64 MiB,
# so the SmolLM2 GGUF (98 MB) travels in two halves (the device tool's README):
#
#   here:    bash benchmarks/gpu_study.sh --split
#            -> .carry1/ (first half of the GGUF), .carry2/ (second half, SHA256, the gguf wheel, the task data);
#               both are git-ignored (/.carry*/)
#   call 1:  run(command="mkdir -p /tmp/hyft-carry && cp .carry1/* /tmp/hyft-carry/", carry=[".carry1"])
#   call 2:  at once (a warm machine keeps /tmp for its idle window only):
#            run(command="bash benchmarks/gpu_study.sh", carry=[".carry2"], timeout_s=590)
#
# Call 2 joins and checks the GGUF, runs `hyft compare --jobs $JOBS` until $DEADLINE_S seconds (SIGTERM then: cells
# checkpoint and stop; a later call on the same machine resumes them), and writes the report to $OUT/study
# (compare.csv, pairs.csv, curves, plots, and progress/ with the pairs of unfinished cells up to their common step;
# checkpoints too large to come back are left out, which only costs a rerun).
# Environment: OUT (default $OUT or /tmp/hyft-out), JOBS (8), DEADLINE_S (500), STEPS (5000), TASKS, METHODS,
# SEEDS (override the config's lists), DEVICE (cuda), EXTRA (more overrides), PY (python3), HYFT_CARRY (/tmp/hyft-carry).
# A test of the script on CPU (after --split): mkdir -p /tmp/c && cp .carry1/* /tmp/c && HYFT_CARRY=/tmp/c DEVICE=cpu \
#   STEPS=2 TASKS=sst2 METHODS=lora-adamw,hybrid-lora-adamw SEEDS=0 JOBS=1 EXTRA="--data.n_dev 16 --data.n_test 16" \
#   OUT=/tmp/gs bash benchmarks/gpu_study.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
CARRY=${HYFT_CARRY:-/tmp/hyft-carry}

if [ "${1:-}" = "--split" ]; then
  src=$(${PY} -c "from hyft.models import smollm2_gguf; print(smollm2_gguf())") || exit 1
  rm -rf .carry1 .carry2 && mkdir -p .carry1 .carry2/data
  half=$(( ($(stat -c %s "$src") + 1) / 2 ))
  head -c "$half" "$src" > .carry1/gguf.part1
  tail -c +"$((half + 1))" "$src" > .carry2/gguf.part2
  (cd "$(dirname "$src")" && sha256sum "$(basename "$src")") > .carry2/SHA256
  ${PY} -m pip download -q --no-deps -d .carry2 "gguf==$(${PY} -c 'import importlib.metadata as m; print(m.version("gguf"))')"
  data=${HYFT_DATA_DIR:-../shared/data}
  for t in sst2 rte wsc wic copa winogrande; do cp -r "$data/$t" .carry2/data/; done
  cp "$data/README.md" .carry2/data/ 2>/dev/null || true
  du -sh .carry1 .carry2
  exit 0
fi

OUT=${OUT:-/tmp/hyft-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$(ls "$PWD"/.carry2/gguf-*.whl 2>/dev/null | head -1)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [ -z "${GGUF:-}" ]; then
  name=$(awk '{print $2}' .carry2/SHA256)
  GGUF="$CARRY/$name"
  if [ ! -f "$GGUF" ]; then
    cat "$CARRY/gguf.part1" .carry2/gguf.part2 > "$GGUF.tmp" || { echo "gpu_study: no first half in $CARRY (call 1)"; exit 2; }
    mv "$GGUF.tmp" "$GGUF"
  fi
  (cd "$CARRY" && sha256sum -c "$OLDPWD/.carry2/SHA256") || { rm -f "$GGUF"; echo "gpu_study: GGUF checksum failed"; exit 2; }
fi
DATA=${DATA:-$([ -d .carry2/data ] && echo .carry2/data || echo "${HYFT_DATA_DIR:-../shared/data}")}

{ date -u; nvidia-smi -L 2>/dev/null; ${PY} -c "import torch, transformers, peft; print('torch', torch.__version__,
'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"; } 2>&1 | tee "$OUT/env.log"
args=(compare --config examples/study_gpu.yaml --out "$OUT/study" --jobs "${JOBS:-8}" --model.name "$GGUF"
      --data.data_dir "$DATA" --train.steps "${STEPS:-5000}" --model.device "${DEVICE:-cuda}")
[ -n "${TASKS:-}" ] && args+=(--tasks "$TASKS")
[ -n "${METHODS:-}" ] && args+=(--methods "$METHODS")
[ -n "${SEEDS:-}" ] && args+=(--seeds "$SEEDS")
# shellcheck disable=SC2206
[ -n "${EXTRA:-}" ] && args+=($EXTRA)
timeout --signal=TERM --kill-after=60 "${DEADLINE_S:-500}" ${PY} -m hyft "${args[@]}" 2>&1 | tee "$OUT/study.log"
echo "gpu_study: compare exited ${PIPESTATUS[0]} (124: deadline reached; rerun to resume)" | tee -a "$OUT/study.log"
${PY} -m hyft "${args[@]}" --report_only 2>&1 | tail -40 | tee "$OUT/report.log"
# Unfinished cells too: each hybrid against its FO twin up to the last step both reached ($OUT/study/progress/).
${PY} -m hyft "${args[@]}" --progress 2>&1 | tail -60 | tee "$OUT/progress.log"
