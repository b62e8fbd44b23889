"""Sampler outputs and the one generation loop that drives every masked-diffusion step rule."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepOutput:
    """What one sampler step returns (the diffusers convention)."""

    prev_sample: torch.Tensor
    """[B, L] the canvas after this step."""
    pred_original_sample: torch.Tensor | None = None
    """[B, L] the model's current guess of the clean sequence."""


@dataclass
class GenerateOutput:
    sequences: torch.Tensor
    """[B, P + gen_length] prompt followed by the generation."""
    nfe: int
    """number of model forward passes."""
