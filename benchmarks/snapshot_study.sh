#!/usr/bin/env bash
# Copies a long `hyft compare` study, running or finished, into the docs as data: the report of the finished cells
# and every hybrid-vs-twin pair so far (`hyft compare --progress`, which reads the study without its lock and
# changes none of its files), and each cell's own record. What docs/data/study_cpu_sst2/ holds:
#
#   bash benchmarks/snapshot_study.sh runs/study_cpu_sst2 docs/data/study_cpu_sst2 \
#       --config examples/study_cpu_sst2.yaml --data.data_dir ../shared/data \
#       --methods lora-adamw,hybrid-lora-adamw --seeds 0
#
# DEST receives progress.txt (cell states, steps, s/step, time left), compare.csv/.md/.json and pairs.csv/.md of the
# cells named (unfinished ones as "running"), plots/ (compare's curves and the pairs figure), and per cell
# cells/TASK/METHOD/seedN/{cell.yaml, curve.jsonl, metrics.jsonl (probe records included), eval.json and run.json once
# finished}, with the study's env.txt, spec.yaml and study.log. Checkpoints and weights are not copied.
# Environment: PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: bash benchmarks/snapshot_study.sh STUDY_DIR DEST [hyft compare options: --config, --methods, ...]" >&2
  exit 2
fi
study=$1 dest=$2
shift 2
PYTHON=${PYTHON:-.venv/bin/python}
[ -d "$study/cells" ] || { echo "snapshot_study.sh: $study holds no study (no cells/ folder)" >&2; exit 2; }
mkdir -p "$dest"
PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m hyft compare --out "$study" "$@" --progress \
  > "$dest/progress.txt.tmp"
mv "$dest/progress.txt.tmp" "$dest/progress.txt"
rm -rf "$dest/plots"
for f in compare.csv compare.md compare.json pairs.csv pairs.md plots; do
  [ -e "$study/progress/$f" ] && cp -r "$study/progress/$f" "$dest/"
done
for f in env.txt spec.yaml study.log; do
  [ -e "$study/$f" ] && cp "$study/$f" "$dest/"
done
# the cells this command names: the rows of its compare.csv
tail -n +2 "$dest/compare.csv" | cut -d, -f1-3 | while IFS=, read -r task method seed; do
  src="$study/cells/$task/$method/seed$seed" to="$dest/cells/$task/$method/seed$seed"
  [ -d "$src" ] || continue
  mkdir -p "$to"
  for f in cell.yaml curve.jsonl metrics.jsonl eval.json run.json; do
    [ -f "$src/$f" ] && cp "$src/$f" "$to/"
  done
done
echo "snapshot_study.sh: $(tail -n +2 "$dest/compare.csv" | wc -l) cell(s) of $study -> $dest"
