"""CADD, continuously augmented discrete diffusion (Zheng et al.): `family: cadd`.

Masked diffusion whose masked positions also carry a continuous latent in the token-embedding space: the model
(the bidirectional `TextDiffModel` with the parameter-free identity latent input) reads embed([MASK]) + z_t at a
masked position, z_t on the flow (default) or Gaussian path driven by the masking's own t; training is the masked
objective (`CaddObjective`, CE on masked positions with the ELBO weight, optional z MSE); validation reports the
full ELBO (CE + the latents' continuous KL); sampling is the one masked loop with `CaddLatentStep`, so every masked
rule works. `model.init_from` may name a masked checkpoint (CADD-Coder started from a masked model): its weights
carry over unchanged, since the latent input adds no parameters and z = 0 gives exactly the masked model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from textdiff.families.base import Built, register_family
from textdiff.families.cadd.api import generate, generate_texts, likelihood, objective_of, sample_cli
from textdiff.families.cadd.objective import CaddObjective, CaddOptions
from textdiff.families.text import TextFamily
from textdiff.modeling.inputs import LatentInput

__all__ = ["CaddFamily", "CaddObjective", "CaddOptions", "generate", "generate_texts", "likelihood", "make_cadd",
           "objective_of"]


def make_cadd(model, options: CaddOptions):
    """Turn a masked `TextDiffModel` into a CADD one in place: latent_dim = hidden_size with the identity latent
    input (no new parameters), the latent path and noise scale recorded in its config."""
    c = model.config
    if c.mask_token_id is None:
        raise ValueError("family cadd needs a [MASK] token: the model config has no mask_token_id")
    c.latent_dim, c.latent_projection = c.hidden_size, "identity"
    c.cadd_latent_path, c.cadd_noise_scale = options.latent_path, options.noise_scale
    model.latent_in = LatentInput(latent_dim=c.hidden_size, hidden_size=c.hidden_size, projection="identity")
    return model


@register_family
class CaddFamily(TextFamily):
    name = "cadd"
    config_class = CaddOptions
    attention_mode = "bidirectional"
    likelihood = "bound"
    latent_sampling = True
    """`textdiff sample` takes --z0 / --latent-samples / --tau-max for this family."""

    def check_recipe(self, recipe) -> None:
        super().check_recipe(recipe)
        if recipe.data.task:
            raise ValueError("family cadd trains on data.corpus; data.task (SFT with task evaluation) is not "
                             "supported yet")
        if recipe.objective.logit_shift:
            raise ValueError("family cadd: objective.logit_shift is not supported (the latent of position i "
                             "belongs to token i)")

    def build_objective(self, options: CaddOptions, model) -> CaddObjective:
        if model.config.mask_token_id is None:
            raise ValueError("family cadd needs a [MASK] token: the model config has no mask_token_id")
        return CaddObjective(**vars(options), mask_token_id=model.config.mask_token_id)

    def build(self, recipe, options: CaddOptions, out: Path) -> Built:
        built = super().build(recipe, options, out)
        make_cadd(built.model, options)
        return built

    def after_training(self, model, built: Built, recipe, out: Path) -> dict:
        s = recipe.sample
        if not s.prompts:
            return {}
        was_training = model.training
        texts = [(p, *generate_texts(model, built.processing_class, prompts=[p], num_samples=1,
                                     gen_length=s.gen_length, steps=s.steps, block_length=s.block_length,
                                     return_nfe=True)) for p in s.prompts]
        model.train(was_training)
        return {"samples": [{"prompt": p, "completion": t[0], "nfe": nfe} for p, t, nfe in texts]}

    def summary(self, results: dict) -> list[str]:
        ev = results["final_eval"]
        lines = [(f"valid NLL (ELBO bound, masked CE + latent KL): {ev['eval_loss']:.4f} nats/token = "
                  f"{ev['eval_bits_per_token']:.4f} bits/token over {ev['eval_tokens']} tokens")]
        for sample in results.get("samples", []):
            lines.append(f"\n--- prompt: {sample['prompt']!r}\n{sample['completion']}")
        return lines

    def sample(self, checkpoint: str, config: dict, args: argparse.Namespace) -> int:
        return sample_cli(checkpoint, config, args)
