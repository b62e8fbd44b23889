#!/usr/bin/env bash
# One command from a fresh clone: install into .venv, train a tiny masked-diffusion LM on the standard library,
# evaluate its ELBO perplexity bound and sample from it.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
bash scripts/install.sh
# run.overwrite=true: running the quickstart again starts runs/quickstart over (to resume instead, add
# run.overwrite=false trainer.resume_from_checkpoint=latest)
.venv/bin/textdiff train recipes/masked/stdlib_quickstart.yaml run.overwrite=true "$@"
.venv/bin/textdiff sample runs/quickstart/final --prompt "def " --prompt "class " --gen-length 64 --steps 64 --block-length 32
