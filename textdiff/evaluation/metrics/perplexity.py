"""Generative perplexity: how likely a judge causal LM finds generated text.

Each text is tokenized by the judge's tokenizer; when the tokenizer has a bos token it is prepended and every
text token is scored, otherwise the first token is context only. Corpus perplexity is
exp(total NLL / total scored tokens), so long texts weigh in proportion to their length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

JUDGE_NAMES = ("smollm2",)
"""judges known by name; anything else must be a local causal-LM checkpoint directory."""


def _causal_lm_types() -> tuple[set[str], set[str]]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def check_causal_lm(model) -> None:
    """One-line ValueError unless `model` is a transformers causal LM (an AutoModelForCausalLM class)."""
    _, classes = _causal_lm_types()
    if type(model).__name__ not in classes:
        raise ValueError(f"the judge must be a causal LM (AutoModelForCausalLM), got {type(model).__name__}")


def load_judge(judge="smollm2", dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of a judge: "smollm2" (SmolLM2-135M-Instruct, textdiff/adapters/smollm2.py), a local
    causal-LM checkpoint directory, or an already loaded (model, tokenizer) pair (checked and returned)."""
    if isinstance(judge, tuple):
        if len(judge) != 2:
            raise ValueError(f"a judge pair must be (model, tokenizer), got a tuple of {len(judge)}")
        model, tokenizer = judge
    elif judge == "smollm2":
        from textdiff.adapters.smollm2 import load_smollm2

        model, tokenizer = load_smollm2(dtype=dtype)
    elif isinstance(judge, (str, Path)) and Path(judge).is_dir():
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        config = AutoConfig.from_pretrained(str(judge))
        model_types, classes = _causal_lm_types()
        architectures = getattr(config, "architectures", None) or []
        # The saved architecture decides: a BertForMaskedLM checkpoint would otherwise load as BertLMHeadModel.
        if (architectures and not set(architectures) & classes) or config.model_type not in model_types:
            raise ValueError(
                f"judge checkpoint {judge} is a {config.model_type!r} model ({', '.join(architectures) or 'no architecture'}), "
                "not a causal LM"
            )
        model = AutoModelForCausalLM.from_pretrained(str(judge), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(judge))
    else:
        raise ValueError(f"judge must be one of {JUDGE_NAMES}, a checkpoint directory or (model, tokenizer); got {judge!r}")
    check_causal_lm(model)
    return model.eval(), tokenizer


@torch.no_grad()
def generative_perplexity(texts: Sequence[str], judge="smollm2", max_length: int | None = None) -> dict:
    """Perplexity of `texts` under the judge. Returns {"perplexity": corpus PPL, "mean_nll": total NLL / total
    tokens, "num_tokens": total scored tokens, "perplexities": per-text PPL, "nlls": per-text mean NLL,
    "token_counts": per-text scored tokens}. `max_length` truncates each text's token ids (bos included)."""
    if isinstance(texts, str) or not texts:
        raise ValueError("generative_perplexity needs a non-empty list of texts")
    model, tokenizer = load_judge(judge)
    device = next(model.parameters()).device
    bos = tokenizer.bos_token_id
    nlls, counts = [], []
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if bos is not None:
            ids = [bos] + ids
        if max_length is not None:
            ids = ids[:max_length]
        if len(ids) < 2:
            raise ValueError(f"text {i} has no token to score ({len(ids)} token(s) with bos={bos})")
        input_ids = torch.tensor([ids], device=device)  # (1, L)
        logits = model(input_ids=input_ids).logits[0, :-1].float()  # (L-1, V): position t predicts token t+1
        nll = torch.nn.functional.cross_entropy(logits, input_ids[0, 1:], reduction="sum")
        nlls.append(float(nll))
        counts.append(len(ids) - 1)
    total = sum(counts)
    mean_nll = sum(nlls) / total
    return {
        "perplexity": math.exp(mean_nll),
        "mean_nll": mean_nll,
        "num_tokens": total,
        "perplexities": [math.exp(s / c) for s, c in zip(nlls, counts)],
        "nlls": [s / c for s, c in zip(nlls, counts)],
        "token_counts": counts,
    }
