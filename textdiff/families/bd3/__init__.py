"""Block diffusion, BD3-LM (Arriola et al. 2025): `family: bd3`.

Masked diffusion within blocks, autoregressive across them: the model is the `TextDiffModel` with block_causal
attention, trained with `BD3Objective` (each block noised at its own t while the model reads the clean blocks
before it, all blocks in one [x_t ; x_0] pass); validation reports the ELBO bound (the sum of the blocks' bounds);
`textdiff sample` / `textdiff.generate` decode block by block with the one masked loop, where the prefix and dual
KV caches are exact (same tokens as cache-free decoding).

The block size is `model.block_size`, one knob: the trunk's attention blocks, the objective's noise blocks and the
decoding check all read it (from the checkpoint's config.block_size once trained). Rules, refused with one line:
the training length (data.seq_len, or data.answer_length for SFT) and sample.block_length must be multiples of
it, and a checkpoint is decoded only with a block length that is a multiple of its block size (`generate`
refuses the others: a generation block must be whole attention blocks for training and the caches to hold).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from textdiff.families.base import Built, register_family
from textdiff.families.bd3.objective import BD3Objective, BD3Options, bd3_attention_mask, block_ids
from textdiff.families.text import TextFamily

__all__ = ["BD3Family", "BD3Objective", "BD3Options", "bd3_attention_mask", "block_ids"]


def check_block_length(block_length: int, block_size: int, name: str = "block_length") -> None:
    """A block-diffusion model decodes whole attention blocks: `block_length` must be a multiple of block_size."""
    if block_length % block_size:
        raise ValueError(f"{name} {block_length} is not a multiple of the model's block_size {block_size}: a "
                         "block-diffusion model decodes whole blocks of the size it was trained on")


@register_family
class BD3Family(TextFamily):
    name = "bd3"
    config_class = BD3Options
    attention_mode = "block_causal"
    likelihood = "bound"

    def check_recipe(self, recipe) -> None:
        super().check_recipe(recipe)
        data, model, block = recipe.data, recipe.model, recipe.model.block_size
        if model.time_conditioning:
            raise ValueError("model.time_conditioning: family bd3 draws one t per block, the trunk takes one per "
                             "sequence (BD3-LM trains without time conditioning); leave it false")
        if recipe.objective.normalization == "answer" and not data.task:
            raise ValueError("objective.normalization='answer' normalises by SFT answer lengths: it needs data.task")
        if not data.task and data.seq_len % block:
            raise ValueError(f"data.seq_len {data.seq_len} is not a multiple of model.block_size {block}")
        if data.task and data.answer_length is not None and data.answer_length % block:
            raise ValueError(f"data.answer_length {data.answer_length} is not a multiple of model.block_size {block}")
        check_block_length(recipe.sample.block_length, block, "sample.block_length")

    def build_objective(self, options: BD3Options, model) -> BD3Objective:
        return BD3Objective(**vars(options), block_size=model.config.block_size,
                            mask_token_id=model.config.mask_token_id)

    def build(self, recipe, options: BD3Options, out: Path) -> Built:
        built = super().build(recipe, options, out)
        # a checkpoint it starts from (model.init_from) brings its own block_size: the recipe's wins
        built.model.config.block_size = recipe.model.block_size
        built.objective = self.build_objective(options, built.model)
        return built

    def sample(self, checkpoint: str, config: dict, args: argparse.Namespace) -> int:
        check_block_length(args.block_length, config["block_size"], "--block-length")  # before any weight loads
        return super().sample(checkpoint, config, args)
