#!/usr/bin/env bash
# Runs a long `hyft compare` or `hyft sweep` in the background and reruns it until it reports done, so a study that
# is killed or interrupted (a cell that crashed, SIGTERM, a reboot followed by launching this again) resumes:
# compare skips finished cells and continues interrupted ones from their last checkpoint; sweep reuses finished
# trials. Everything is logged in the study directory.
#
#   bash benchmarks/run_study.sh STUDY_DIR [--foreground] HYFT_COMMAND [options...]
#   e.g. bash benchmarks/run_study.sh runs/study_cpu_sst2 compare --config examples/study_cpu_sst2.yaml \
#            --out runs/study_cpu_sst2 --data.data_dir ../shared/data
#
# STUDY_DIR receives: launcher.log (this script's attempts and exit codes), study.log (the hyft output of every
# attempt), launcher.pid (the background launcher), env.txt (per launch, appended: date, commit, command, versions,
# cores), DONE when finished.
# Give the same directory to hyft as --out. Stop it with: kill $(cat STUDY_DIR/launcher.pid) (the running attempt
# gets SIGTERM: compare cells write a checkpoint and stop; launching this again resumes).
# Environment:
#   PYTHON            interpreter with hyft's dependencies (default python3); src/ of this checkout is on PYTHONPATH
#   HYFT_STUDY_TRIES  attempts before giving up (default 20)
#   HYFT_STUDY_WAIT   seconds between attempts (default 10)
# Exit codes (foreground): 0 done, 2 the command is wrong (usage or config error: rerunning cannot help; not retried),
# 3 still not done after HYFT_STUDY_TRIES attempts, 143 stopped by SIGTERM/SIGINT.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -lt 2 ]; then
  echo "usage: bash benchmarks/run_study.sh STUDY_DIR [--foreground] compare|sweep [options...]" >&2
  exit 2
fi
DIR="$1"; shift
FOREGROUND=0
if [ "${1:-}" = "--foreground" ]; then FOREGROUND=1; shift; fi
case "${1:-}" in
  compare|sweep) ;;
  *) echo "run_study.sh: expected a hyft command (compare or sweep), got '${1:-}'" >&2; exit 2 ;;
esac
mkdir -p "$DIR"
if [ "$FOREGROUND" = 0 ]; then
  nohup bash "$0" "$DIR" --foreground "$@" >> "$DIR/launcher.log" 2>&1 < /dev/null &
  echo $! > "$DIR/launcher.pid"
  echo "run_study.sh: started in the background (pid $(cat "$DIR/launcher.pid")); follow with: tail -f $DIR/study.log"
  echo "run_study.sh: stop with: kill \$(cat $DIR/launcher.pid); launch the same command again to resume"
  exit 0
fi

PY="${PYTHON:-python3}"
TRIES="${HYFT_STUDY_TRIES:-20}"
WAIT="${HYFT_STUDY_WAIT:-10}"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
rm -f "$DIR/DONE"
echo $$ > "$DIR/launcher.pid"
{  # one block per launch, appended: a study resumed across sessions and checkouts keeps every commit that ran it
  [ -s "$DIR/env.txt" ] && echo "---"
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "command: hyft $*"
  "$PY" -c "import platform, torch, transformers, peft; print('python', platform.python_version(), '| torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| cuda', torch.cuda.is_available())" 2>&1
  nvidia-smi -L 2>/dev/null || echo "no GPU (nvidia-smi not found)"
  nproc 2>/dev/null | sed 's/^/cpus: /'
} >> "$DIR/env.txt"

child=""
stop() {
  echo "[run_study] $(date -u +%FT%TZ) stopping: SIGTERM to the running attempt (pid ${child:-none})"
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null && wait "$child"
  exit 143
}
trap stop TERM INT

for attempt in $(seq 1 "$TRIES"); do
  echo "[run_study] $(date -u +%FT%TZ) attempt $attempt/$TRIES: hyft $*"
  echo "[run_study] $(date -u +%FT%TZ) attempt $attempt/$TRIES" >> "$DIR/study.log"
  "$PY" -m hyft "$@" >> "$DIR/study.log" 2>&1 &
  child=$!
  wait "$child"
  rc=$?
  child=""
  echo "[run_study] $(date -u +%FT%TZ) attempt $attempt exited with $rc"
  if [ "$rc" = 0 ]; then
    echo "done $(date -u +%FT%TZ) after $attempt attempt(s): hyft $*" > "$DIR/DONE"
    echo "[run_study] done"
    exit 0
  fi
  if [ "$rc" = 2 ]; then
    echo "[run_study] exit 2 is a usage or config error (see $DIR/study.log); not retrying"
    exit 2
  fi
  [ "$attempt" -lt "$TRIES" ] && sleep "$WAIT"
done
echo "[run_study] not done after $TRIES attempts; see $DIR/study.log"
exit 3
