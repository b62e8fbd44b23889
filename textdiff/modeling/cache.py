"""Key/value cache of the trunk's decoding path, and the attention masks of the three attention modes."""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer keys and values of the positions already processed, in order of position.

    `update` appends the new positions of one layer and returns everything cached for it; `crop` drops the tail
    (e.g. the current block of a diffusion sampler, which is recomputed every step). With `write_at = s` set,
    the new positions overwrite the cached slice [s, s + L) instead of being appended: the dual cache of
    Fast-dLLM, which keeps the masked suffix cached and recomputes only the current block.
    """

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.write_at: int | None = None

    @property
    def seq_len(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    @property
    def next_position(self) -> int:
        """Absolute position of the first new query: `write_at` when overwriting, else the cached length."""
        return self.seq_len if self.write_at is None else self.write_at

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.write_at is not None:
            start, end = self.write_at, self.write_at + k.shape[2]
            if self.keys[layer_idx] is None or end > self.keys[layer_idx].shape[2]:
                raise ValueError(f"cache write [{start}, {end}) is outside the {self.seq_len} cached positions")
            self.keys[layer_idx][:, :, start:end] = k
            self.values[layer_idx][:, :, start:end] = v
            return self.keys[layer_idx], self.values[layer_idx]
        if self.keys[layer_idx] is not None:
            k = torch.cat([self.keys[layer_idx], k], dim=2)  # [B, Hkv, S + L, D]
            v = torch.cat([self.values[layer_idx], v], dim=2)
        self.keys[layer_idx], self.values[layer_idx] = k, v
        return k, v

    def crop(self, length: int) -> None:
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            if k is not None:
                self.keys[i], self.values[i] = k[:, :, :length], v[:, :, :length]


def build_attention_mask(
    mode: str,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    block_size: int,
    block_offset: int = 0,
) -> torch.Tensor | None:
    """Boolean SDPA mask [B|1, 1, Lq, Lk] (True = may attend), or None when every query sees every key.

    query_positions [Lq] and key_positions [Lk] are absolute positions; key_padding_mask [B, Lk] is 1 for real
    tokens. Each query may always see its own key, so a padded query row is never empty (which would give NaN).
    Block-causal blocks are [block_offset + k * block_size, block_offset + (k + 1) * block_size) for every
    integer k: with an offset the first block is partial (a decoder aligns its blocks with the prompt's end).
    """
    q = query_positions[:, None]  # [Lq, 1]
    k = key_positions[None, :]  # [1, Lk]
    if mode == "bidirectional":
        allowed = None
    elif mode == "causal":
        allowed = k <= q
    elif mode == "block_causal":
        key_block = torch.div(k - block_offset, block_size, rounding_mode="floor")
        allowed = key_block <= torch.div(q - block_offset, block_size, rounding_mode="floor")
    else:
        raise ValueError(f"unknown attention mode {mode!r}")
    if key_padding_mask is None:
        return None if allowed is None else allowed[None, None]
    padding = key_padding_mask.bool()[:, None, None, :]  # [B, 1, 1, Lk]
    mask = padding if allowed is None else padding & allowed[None, None]
    return mask | (k == q)[None, None]
