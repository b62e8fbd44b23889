"""Heads: what reads the trunk's final hidden states [B, L, hidden].

- tokens: `token_head` -> a plain `nn.Linear(hidden, vocab)` without bias giving logits [B, L, V] (plain, so HF's
  weight tying and `resize_token_embeddings` keep working); `TextDiffModel.lm_head`.
- `VectorHead`: a vector per position: x0 / velocity per token (continuous families) or per patch (the DiT's
  velocity), optionally zero-initialised so the prediction starts at exactly 0.
"""

from __future__ import annotations

from torch import nn

__all__ = ["VectorHead", "token_head"]


def token_head(*, hidden_size: int, vocab_size: int) -> nn.Linear:
    """hidden -> token logits [B, L, V] (can share its weight with the token embedding)."""
    return nn.Linear(hidden_size, vocab_size, bias=False)


class VectorHead(nn.Linear):
    """hidden -> [B, L, out_dim]; zero_init: `_init_weights` sets weight and bias to exactly zero."""

    def __init__(self, *, hidden_size: int, out_dim: int, zero_init: bool = False, bias: bool = True):
        super().__init__(hidden_size, out_dim, bias=bias)
        self.zero_init = zero_init
