#!/usr/bin/env bash
# One command from a fresh clone: install into .venv, train a tiny masked-diffusion LM on the standard library,
# evaluate its ELBO perplexity bound and sample from it (`textdiff eval`: samples and their figures beside held-out
# text).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
bash scripts/install.sh
# run.overwrite=true: running the quickstart again starts runs/quickstart over (to resume instead, add
# run.overwrite=false trainer.resume_from_checkpoint=latest)
.venv/bin/textdiff train recipes/masked/stdlib_quickstart.yaml run.overwrite=true "$@"
# samples (4 per prompt, nucleus sampling with a repetition penalty: greedy decoding of this model repeats one
# token) with their figures (gen-PPL under SmolLM2-135M, distinct-n, self-BLEU, repetition, ast.parse fraction)
# beside the same figures for held-out stdlib text starting with the same prompts; JSON in runs/quickstart/final
.venv/bin/textdiff eval runs/quickstart/final --prompt "def " --prompt "import " --prompt "class " --num-samples 4 \
    --temperature 0.8 --top-p 0.9 --repetition-penalty 1.3
