"""Samplers: step rules and the one generation loop."""

from textdiff.samplers.ancestral import AncestralSampler
from textdiff.samplers.base import GenerateOutput, StepOutput
from textdiff.samplers.dream import ConfidenceSampler
from textdiff.samplers.fastdllm import FactorSampler, ThresholdSampler
from textdiff.samplers.generate import CACHE_MODES, generate, generate_autoregressive
from textdiff.samplers.masked import MaskedSampler, RemaskingSampler, add_gumbel_noise, num_transfer_tokens
from textdiff.samplers.registry import SAMPLERS, build_sampler

__all__ = [
    "CACHE_MODES", "SAMPLERS", "AncestralSampler", "ConfidenceSampler", "FactorSampler", "GenerateOutput",
    "MaskedSampler", "RemaskingSampler", "StepOutput", "ThresholdSampler", "add_gumbel_noise", "build_sampler",
    "generate", "generate_autoregressive", "num_transfer_tokens",
]
