"""Continuous embedding diffusion (CDCD, Dieleman et al. 2022): `family: continuous`.

Token embeddings, L2-normalised and scaled by sqrt(d), are noised (ve: x0 + sigma eps, CDCD's default; or the
flow path (1 - t) x0 + t eps); the bidirectional `TextDiffModel` reads them through its vector input (with a
self-conditioning input) plus the token embedding of [MASK] (noisy) or of the clean token (condition), and is
trained with CE on the clean tokens. `model.time_warp` (a `TimeWarp`, saved with the weights) is fitted to the
loss during training and spaces both the training noise levels and the sampler's steps. Sampling runs the one
continuous loop with the flow rules; validation reports the CE averaged over noise levels (see `likelihood`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from textdiff.families.base import Built, register_family
from textdiff.families.continuous.api import generate_texts, likelihood, objective_of, sample_cli
from textdiff.families.continuous.objective import ContinuousObjective, ContinuousOptions
from textdiff.families.text import TextFamily
from textdiff.modeling import TextDiffModel

__all__ = ["ContinuousFamily", "ContinuousObjective", "ContinuousOptions", "generate_texts", "likelihood",
           "objective_of"]


@register_family
class ContinuousFamily(TextFamily):
    name = "continuous"
    config_class = ContinuousOptions
    attention_mode = "bidirectional"
    likelihood = "bound"

    def check_recipe(self, recipe) -> None:
        super().check_recipe(recipe)
        if recipe.model.init_from:
            raise ValueError("family continuous trains from scratch; model.init_from is not supported")
        if recipe.data.task:
            raise ValueError("family continuous pretrains on data.corpus; data.task (SFT) is not supported")
        if not recipe.model.time_conditioning:
            raise ValueError("family continuous needs model.time_conditioning: true (the denoiser reads t)")
        if recipe.sample.prompts:
            raise ValueError("family continuous draws its samples with `textdiff sample` / generate_texts; "
                             "leave sample.prompts empty")

    def decoder(self, recipe) -> None:
        return None

    def build_objective(self, options: ContinuousOptions, model) -> ContinuousObjective:
        return ContinuousObjective(**vars(options))

    def build(self, recipe, options: ContinuousOptions, out: Path) -> Built:
        built = super().build(recipe, options, out)
        config = built.model.config
        config.vector_dim = config.hidden_size  # the noisy embeddings live in the token-embedding space
        config.vector_self_condition = options.self_condition > 0
        config.time_warp_bins, config.time_warp_learn = options.time_warp_bins, options.time_warp
        config.continuous_path = options.path
        config.continuous_sigma_min, config.continuous_sigma_max = options.sigma_min, options.sigma_max
        built.model = TextDiffModel(config)
        return built

    def after_training(self, model, built: Built, recipe, out: Path) -> dict:
        return {}

    def summary(self, results: dict) -> list[str]:
        ev = results["final_eval"]
        return [(f"valid CE over noise levels: {ev['eval_loss']:.4f} nats/token = {ev['eval_bits_per_token']:.4f} "
                 f"bits/token over {ev['eval_tokens']} tokens")]

    def sample(self, checkpoint: str, config: dict, args: argparse.Namespace) -> int:
        return sample_cli(checkpoint, config, args)
