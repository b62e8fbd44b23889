"""BD3-LM training (block diffusion, Arriola et al. 2025): `family: bd3`.

The sequence is cut into blocks of `block_size`; each block gets its own time t (stratified over batch x blocks,
as in bd3lms) and is masked at its rate 1 - alpha(t), and the model denoises block b while reading the CLEAN
blocks before it. All blocks train in one pass (BD3's vectorised form): the model reads [x_t ; x_0] (length 2L)
with positions cat(arange(L), arange(L)) and the mask of `bd3_attention_mask`, and only the x_t half's logits are
scored. Loss and likelihood are the masked objective's (SUBS CE on masked positions, weight w(t) of each position's
own block, same normalisations): the sum over blocks of each block's MDLM bound given its clean past.

Blocks are where decoding puts them: `textdiff.generate` starts the attention blocks of a block-causal model at the
prompt's end, so here block k of an SFT example is [P + k * block_size, P + (k + 1) * block_size), P its prompt
length (the prompt, never noised, is cut into blocks backwards from its end, as at decoding time); pretraining
blocks start at 0. Noisy block b then sees exactly what decoding block b sees: the clean (decoded) past.

Overrides of `MaskedDiffusionObjective`: `_time_slots` (one t per block) and `_denoise` (the [x_t ; x_0] pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from textdiff.objectives.masked import MaskedDiffusionObjective, MaskedDiffusionOptions

__all__ = ["BD3Objective", "BD3Options", "bd3_attention_mask", "block_ids"]


def block_ids(prompt_lengths: Tensor, length: int, block_size: int) -> Tensor:
    """[B, L] block index of each position: floor((i - P_b) / block_size), so block 0 starts at the prompt's end
    P_b (prompt_lengths [B] long; zeros for pretraining) and prompt blocks are negative."""
    positions = torch.arange(length, device=prompt_lengths.device)[None, :]  # [1, L]
    return torch.div(positions - prompt_lengths[:, None], block_size, rounding_mode="floor")  # [B, L]


def bd3_attention_mask(blocks: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
    """BD3-LM's vectorised training mask over [x_t ; x_0]: bool [B, 1, 2L, 2L], True = may attend.

    blocks [B, L] are the block indices of the L positions (`block_ids`); key_padding_mask [B, L] is 0 on padding.
    Query and key halves (n = noisy x_t, c = clean x_0), block indices bq / bk:
      n -> n: bq == bk (a noisy block attends itself, bidirectionally);
      n -> c: bk < bq  (and the clean blocks before it);
      c -> c: bk <= bq (the clean half is block-causal);
      c -> n: never    (no clean position ever sees noise).
    Padding keys are hidden in both halves; every position sees itself, so no row is empty.
    """
    L = blocks.shape[1]
    both = torch.cat([blocks, blocks], dim=1)  # [B, 2L]
    bq, bk = both[:, :, None], both[:, None, :]  # [B, 2L, 1], [B, 1, 2L]
    clean = torch.arange(2 * L, device=blocks.device) >= L  # [2L]
    cq, ck = clean[None, :, None], clean[None, None, :]  # [1, 2L, 1], [1, 1, 2L]
    mask = (~cq & ~ck & (bq == bk)) | (~cq & ck & (bk < bq)) | (cq & ck & (bk <= bq))  # [B, 2L, 2L]
    if key_padding_mask is not None:
        mask = mask & key_padding_mask.bool().repeat(1, 2)[:, None, :]
    mask = mask | torch.eye(2 * L, dtype=torch.bool, device=blocks.device)
    return mask[:, None]  # [B, 1, 2L, 2L]


@dataclass
class BD3Options(MaskedDiffusionOptions):
    """The `objective` section of a `family: bd3` recipe: the masked options (schedule, eps, antithetic and its
    sampler, normalization). The block size is `model.block_size` (saved in the checkpoint's config, read by
    decoding); the masked family's random_truncation, logit_shift and anneal_steps do not apply."""

    def __post_init__(self) -> None:
        super().__post_init__()
        unsupported = {"random_truncation": self.random_truncation > 0, "logit_shift": self.logit_shift,
                       "anneal_steps": self.anneal_steps > 0}
        given = [name for name, is_set in unsupported.items() if is_set]
        if given:
            raise ValueError(f"{', '.join(given)}: masked-family options that block diffusion does not support "
                             "(leave them unset)")


@dataclass(kw_only=True)
class BD3Objective(BD3Options, MaskedDiffusionObjective):
    """Block diffusion on a block-causal `TextDiffModel`. Batch keys as `MaskedDiffusionObjective`'s; a prompt_mask
    must mark a prefix of each row (the prompt), where the row's blocks start."""

    block_size: int
    """length of a block; must equal the model's `config.block_size` (the recipe's model.block_size)."""

    attention_mode: ClassVar[str] = "block_causal"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")

    def prompt_lengths(self, input_ids: Tensor, prompt_mask: Tensor | None) -> Tensor:
        """[B] where each row's first block starts: its prompt length (0 without a prompt_mask)."""
        if prompt_mask is None:
            return torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        lengths = prompt_mask.long().sum(1)  # [B]
        prefix = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < lengths[:, None]  # [B, L]
        if not torch.equal(prefix, prompt_mask.bool()):
            raise ValueError("block diffusion needs each row's prompt_mask to be a prefix (the prompt, then the "
                             "answer): blocks start where it ends")
        return lengths

    def _time_slots(self, input_ids: Tensor, prompt_mask: Tensor | None) -> tuple[Tensor, int]:
        blocks = block_ids(self.prompt_lengths(input_ids, prompt_mask), input_ids.shape[1], self.block_size)
        # prompt blocks (< 0) are never noised: they borrow slot 0; -(-L // bs) slots cover any prompt length
        return blocks.clamp(min=0), -(-input_ids.shape[1] // self.block_size)

    def _denoise(self, model: torch.nn.Module, noisy_ids: Tensor, input_ids: Tensor, attention_mask: Tensor | None,
                 prompt_mask: Tensor | None, extras: dict[str, Any]) -> Tensor:
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError("block diffusion builds its own attention mask: pass a [B, L] padding mask")
        model_block = getattr(model.config, "block_size", None)
        if model_block != self.block_size:
            raise ValueError(f"the objective's block_size {self.block_size} differs from the model's "
                             f"config.block_size {model_block}")
        B, L = input_ids.shape
        blocks = block_ids(self.prompt_lengths(input_ids, prompt_mask), L, self.block_size)  # [B, L]
        if prompt_mask is None and attention_mask is None:
            blocks = blocks[:1]  # every row has the same blocks: one [1, 1, 2L, 2L] mask serves the batch
        mask = bd3_attention_mask(blocks, attention_mask)  # [B|1, 1, 2L, 2L]
        positions = torch.arange(L, device=input_ids.device).repeat(2)[None].expand(B, 2 * L)  # [B, 2L]
        both = torch.cat([noisy_ids, input_ids], dim=1)  # [B, 2L]: x_t then x_0
        logits = model(input_ids=both, attention_mask=mask, position_ids=positions, **extras).logits  # [B, 2L, V]
        return logits[:, :L]  # [B, L, V]: the noisy half
