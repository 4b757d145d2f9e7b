#!/usr/bin/env bash
# Device check for the distributed code (one GPU): versions, the 2-rank gloo tests under this torch, NCCL/FSDP2
# cases on the GPU, and the two launchers through the CLI. Usage: bash tests/dist_scripts/gpu_check.sh [OUT_DIR]
set -u
OUT=${1:-${OUT:-/tmp/hyft-gpu-check}}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
PY=${PYTHON:-python3}
$PY -c "import torch, transformers, peft, accelerate; print('versions', torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
echo "== 1. tests/test_dist.py (2 gloo ranks on the CPU) =="
timeout 240 $PY -m pytest tests/test_dist.py -q -p no:cacheprovider -W ignore -x 2>&1 | tail -15
echo "== 2. GPU cases (NCCL, 1 rank) =="
timeout 200 $PY -m torch.distributed.run --standalone --nproc_per_node 1 tests/dist_scripts/gpu_check.py 2>&1 \
  | grep -E "^\[|Error|error|Traceback" | head -40
echo "== 3. launchers through the CLI =="
$PY tests/dist_scripts/gpu_check.py --save-tiny /tmp/hyft-tiny >/dev/null 2>&1
A="--model.name /tmp/hyft-tiny --model.dtype bfloat16 --data.data_dir tests/fixtures/data --data.n_train 40 --data.n_dev 4 --data.n_test 4 --train.steps 4 --train.batch_size 4 --train.progress false --train.overwrite true"
timeout 90 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m hyft train $A --dist.strategy ddp \
  --train.output_dir "$OUT/torchrun-ddp" 2>&1 | grep -E "^\[hyft\]|error|Error" | head
timeout 90 accelerate launch --num_processes 1 --num_machines 1 --use_fsdp --fsdp_version 2 --mixed_precision no \
  --dynamo_backend no -m hyft train $A --train.output_dir "$OUT/accelerate-fsdp2" 2>&1 | grep -E "^\[hyft\]|error|Error" | head
for d in torchrun-ddp accelerate-fsdp2; do
  $PY -c "import json,sys; r=json.load(open('$OUT/$d/run.json')); print('$d', r['distributed'], r['device'], r['final'])" 2>&1 | tail -1
done
