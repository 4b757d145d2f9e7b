#!/usr/bin/env bash
# The whole long-budget CPU study of issue 13, in the issue's order, as one resumable background job: every stage
# runs under benchmarks/run_study.sh --foreground (rerun until done) and is skipped once it has finished, so
# launching this again after a kill, a reboot or a new session continues where it stopped (finished cells and
# trials are reused; an interrupted cell resumes from its last checkpoint, bit-identical at equal threads).
#
#   nohup bash benchmarks/cpu_study_plan.sh runs > runs/cpu_study_plan.log 2>&1 < /dev/null &
#   bash benchmarks/cpu_study_plan.sh runs --list          # the stages and which are done
#
# Stages (SmolLM2-135M, SST-2, 1,000 examples, batch 16, 1,000 steps per cell; examples/study_cpu_sst2.yaml):
#   lora-s0     lora-adamw / hybrid-lora-adamw, seed 0              (two cells side by side, one thread each)
#   lora-s1     the same pair, seed 1
#   prompt-lr   prompt tuning's PEFT lr: examples/sweep_prompt_sst2.yaml, fo.lr 3e-4 ... 3e-2, 100 steps
#   prompt-init the same at peft's random init (fo.lr 1e-3, 1e-2): what sample_vocab buys
#   prompt-s0   prompt-adamw / hybrid-prompt-adamw, seed 0 (at the lr in examples/study_cpu_sst2.yaml)
#   sgd-lr      LoRA with plain SGD: fo.lr 1e-2, 3e-2, 1e-1, 100 steps (the paper's 1e-3 did not move in 30)
#   sgd-s0      lora-sgd / hybrid-lora-sgd, seed 0
#   landscape   zo.lr {0, 1e-7, 1e-6, 1e-5, 1e-4} x fo.lr {3e-4, 1e-3, 3e-3}, hybrid LoRA-AdamW, 200 steps
# Costs at quiet step times (~8.5 s LoRA, ~13-18 s hybrid per step at one thread): ~5-6 CPU-hours per pair,
# ~0.5 h per 100-step sweep point, ~15 h for the landscape. STAGES="lora-s1 sgd-lr" runs a subset, in that order.
# Environment: PYTHON (default .venv/bin/python), DATA (default ../shared/data).
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:?usage: cpu_study_plan.sh RUNS_DIR [--list]}
export PYTHON=${PYTHON:-.venv/bin/python}
data=${DATA:-../shared/data}
cfg=examples/study_cpu_sst2.yaml
study=(compare --config "$cfg" --out "$runs/study_cpu_sst2" --data.data_dir "$data" --seeds)
short=(--train.steps 100 --train.save_every 0 --train.probe_every 0 --data.n_test 0 --data.data_dir "$data")

stage() {  # NAME DIR COMMAND...: one stage, skipped once RUNS_DIR/.plan/NAME.done exists (--list: only listed)
  local name=$1 dir=$2 mark="$runs/.plan/$1.done"
  shift 2
  if [ -f "$mark" ]; then echo "[plan] $name: done ($dir)"; return 0; fi
  if [ "$list" = 1 ]; then echo "[plan] $name: to do ($dir)"; return 0; fi
  echo "[plan] $(date -u +%FT%TZ) $name: running (log: $dir/study.log)"
  bash benchmarks/run_study.sh "$dir" --foreground "$@"
  local rc=$?
  echo "[plan] $(date -u +%FT%TZ) $name: exited $rc"
  [ $rc = 0 ] && mkdir -p "$runs/.plan" && date -u +%FT%TZ > "$mark"
  return $rc
}

list=0
[ "${2:-}" = "--list" ] && list=1
for name in ${STAGES:-lora-s0 lora-s1 prompt-lr prompt-init prompt-s0 sgd-lr sgd-s0 landscape}; do
  case $name in
    lora-s0) stage "$name" "$runs/study_cpu_sst2" "${study[@]}" 0 --methods lora-adamw,hybrid-lora-adamw \
               --threads 1 --jobs 2 ;;
    # Every pair goes into the one study folder, so lora-adamw (the target of every steps-to-target, listed in each
    # command) trains once and is reused; the plain command with --report_only then tables them all.
    lora-s1) stage "$name" "$runs/study_cpu_sst2" "${study[@]}" 1 --methods lora-adamw,hybrid-lora-adamw \
               --threads 1 --jobs 2 ;;
    prompt-lr) stage "$name" "$runs/sweep_prompt_sst2" sweep --config examples/sweep_prompt_sst2.yaml \
                 --grid fo.lr=1e-3,1e-2,3e-4,3e-2 --out "$runs/sweep_prompt_sst2" --data.data_dir "$data" ;;
    prompt-init) stage "$name" "$runs/sweep_prompt_sst2_random" sweep --config examples/sweep_prompt_sst2.yaml \
                   --grid fo.lr=1e-3,1e-2 --peft.prompt_init random --out "$runs/sweep_prompt_sst2_random" \
                   --data.data_dir "$data" ;;
    prompt-s0) stage "$name" "$runs/study_cpu_sst2" "${study[@]}" 0 \
                 --methods lora-adamw,prompt-adamw,hybrid-prompt-adamw --threads 1 --jobs 2 ;;
    sgd-lr) stage "$name" "$runs/sweep_sgd_sst2" sweep --config "$cfg" --method lora --grid fo.lr=1e-2,3e-2,1e-1 \
              --fo.optimizer sgd --out "$runs/sweep_sgd_sst2" "${short[@]}" ;;
    sgd-s0) stage "$name" "$runs/study_cpu_sst2" "${study[@]}" 0 --methods lora-adamw,lora-sgd,hybrid-lora-sgd \
              --threads 1 --jobs 2 ;;
    landscape) stage "$name" "$runs/landscape_sst2" sweep --config examples/landscape_sst2.yaml \
                 --grid zo.lr=0,1e-7,1e-6,1e-5,1e-4 fo.lr=3e-4,1e-3,3e-3 --heatmap zo.lr,fo.lr \
                 --out "$runs/landscape_sst2" --data.data_dir "$data" ;;
    *) echo "[plan] unknown stage '$name'" >&2; exit 2 ;;
  esac || exit $?
done
[ "$list" = 1 ] || echo "[plan] $(date -u +%FT%TZ) all stages done"
