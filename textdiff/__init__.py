"""textdiff: diffusion language models on one shared Transformer backbone."""

import os

import torch

__version__ = "0.1.0"

if not torch.cuda.is_available():
    # DeepSpeed (imported lazily by transformers) otherwise prints its accelerator guess on stdout.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

from textdiff.modeling import KVCache, TextDiffConfig, TextDiffModel  # noqa: E402  (registers the Auto classes)

__all__ = ["KVCache", "TextDiffConfig", "TextDiffModel", "__version__", "generate", "load_recipe"]


def __getattr__(name: str):
    # Heavier entry points load lazily so `import textdiff` stays quick.
    if name == "generate":
        from textdiff.samplers import generate

        return generate
    if name == "load_recipe":
        from textdiff.config import load_recipe

        return load_recipe
    raise AttributeError(f"module 'textdiff' has no attribute {name!r}")
