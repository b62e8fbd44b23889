"""A family defined entirely outside `textdiff/`: uniform-noise discrete diffusion on arithmetic progressions.

It is what a researcher writes to plug a new family in: an options dataclass (the recipe's `objective` section), a
builder, an objective, a step rule registered by name, and a `textdiff sample` pipeline. A recipe names it by
module path (`family: tests.toy_family`), so importing this module is all the registration there is.

- Data: sequences (s, s + d, s + 2d, ...) mod `modulus`, for every start s and step d.
- Forward process: each token is replaced by a uniformly random one with probability `noise * t`, t ~ U(0, 1).
- Loss: cross-entropy of the clean tokens at every position; validation NLL is the same at fixed seeded t.
- Sampler "toy_resample": start from random tokens; each step rewrites the positions whose argmax disagrees with
  the canvas, at most ceil(L / steps_left) of the most confident ones.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from datasets import Dataset

from textdiff import TextDiffConfig, TextDiffModel
from textdiff.families import Built, Family, register_family
from textdiff.objectives import Objective, ObjectiveOutput
from textdiff.samplers import Sampler, StepOutput
from textdiff.samplers.registry import REGISTRY, build_sampler, register_sampler


@dataclass
class ToyOptions:
    """The `objective` section of a `family: tests.toy_family` recipe."""

    modulus: int = 16
    """vocabulary size: tokens are residues mod `modulus`."""
    length: int = 8
    """tokens per sequence."""
    noise: float = 0.9
    """probability of replacing a token at t = 1."""

    def __post_init__(self):
        if not 0.0 < self.noise <= 1.0:
            raise ValueError(f"noise must be in (0, 1], got {self.noise}")


def progressions(modulus: int, length: int) -> list[list[int]]:
    return [[(s + d * i) % modulus for i in range(length)] for s in range(modulus) for d in range(1, modulus)]


def corrupt(x: torch.Tensor, t: torch.Tensor, noise: float, modulus: int, generator=None) -> torch.Tensor:
    u = torch.rand(x.shape, generator=generator)  # [B, L]
    random_tokens = torch.randint(0, modulus, x.shape, generator=generator)
    return torch.where(u < noise * t[:, None], random_tokens, x)


@dataclass
class ToyObjective(Objective):
    options: ToyOptions
    attention_mode: ClassVar[str] = "bidirectional"

    def _loss(self, model, x: torch.Tensor, generator=None) -> torch.Tensor:
        t = torch.rand(x.shape[0], generator=generator)  # [B]
        logits = model(corrupt(x, t, self.options.noise, self.options.modulus, generator)).logits  # [B, L, V]
        return F.cross_entropy(logits.flatten(0, 1), x.flatten(), reduction="sum")

    def __call__(self, model, batch: dict[str, Any]) -> ObjectiveOutput:
        x = batch["input_ids"]
        return ObjectiveOutput(loss=self._loss(model, x) / x.numel())

    def nll(self, model, batch, *, generator=None, num_samples: int = 1):
        x = batch["input_ids"]
        total = sum(self._loss(model, x, generator) for _ in range(num_samples)) / num_samples
        return total, torch.tensor(x.numel())


class ToyResampler(Sampler):
    """Rewrite the most confident disagreeing positions, spreading the canvas over the steps left."""

    kind = "masked"

    def __init__(self, *, mask_token_id=None, temperature: float = 0.0, generator=None):
        self.generator = generator

    def set_timesteps(self, num_steps: int, **schedule_options) -> None:
        self.timesteps = torch.arange(num_steps, 0, -1)  # steps left

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> StepOutput:
        confidence, guess = model_output.softmax(-1).max(-1)  # [B, L]
        budget = math.ceil(sample.shape[1] / int(timestep))
        score = torch.where(guess != sample, confidence, torch.full_like(confidence, -1.0))
        chosen = score.topk(budget, dim=1).indices  # [B, budget]
        rewrite = torch.zeros_like(sample, dtype=torch.bool).scatter(1, chosen, True) & (guess != sample)
        return StepOutput(prev_sample=torch.where(rewrite, guess, sample), pred_original_sample=guess)


if "toy_resample" not in REGISTRY:
    register_sampler("toy_resample", "masked", ToyResampler)


def _collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor([r["input_ids"] for r in rows])}


@register_family
class ToyFamily(Family):
    name = "toy"
    config_class = ToyOptions

    def build(self, recipe, options: ToyOptions, out: Path) -> Built:
        rows = progressions(options.modulus, options.length)
        valid = [r for r in rows if r[0] == 0]
        train = [r for r in rows if r[0] != 0]
        m = recipe.model
        config = TextDiffConfig(vocab_size=options.modulus, hidden_size=m.hidden_size,
                                num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
                                max_position_embeddings=options.length, attention_mode="bidirectional")
        return Built(model=TextDiffModel(config), objective=ToyObjective(options),
                     train_dataset=Dataset.from_dict({"input_ids": train}),
                     eval_dataset=Dataset.from_dict({"input_ids": valid}), collator=_collate,
                     data_meta={"sequences": len(rows), "modulus": options.modulus})

    def summary(self, results: dict) -> list[str]:
        return [f"toy: valid nats/token {results['final_eval']['eval_loss']:.3f}"]

    @torch.no_grad()
    def sample(self, checkpoint: str, config: dict, args: argparse.Namespace) -> int:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(checkpoint).eval()
        generator = torch.Generator().manual_seed(args.seed)
        sampler = build_sampler("toy_resample", mask_token_id=None, generator=generator)
        sampler.set_timesteps(args.steps)
        length = model.config.max_position_embeddings
        for prompt in args.prompt:
            prefix = [int(v) for v in prompt.split(",")]
            x = torch.randint(0, model.config.vocab_size, (1, length), generator=generator)  # [1, L]
            x[0, : len(prefix)] = torch.tensor(prefix)
            for t in sampler.timesteps:
                x = sampler.step(model(x).logits, t, x).prev_sample
                x[0, : len(prefix)] = torch.tensor(prefix)  # the prompt stays clean
            print(f"toy: {prompt} -> {','.join(map(str, x[0].tolist()))}")
        return 0
