"""Samplers: step rules and the one generation loop."""

from textdiff.samplers.base import GenerateOutput, StepOutput
from textdiff.samplers.generate import generate, generate_autoregressive
from textdiff.samplers.masked import RemaskingSampler, add_gumbel_noise, num_transfer_tokens

__all__ = [
    "GenerateOutput", "RemaskingSampler", "StepOutput", "add_gumbel_noise", "generate",
    "generate_autoregressive", "num_transfer_tokens",
]
