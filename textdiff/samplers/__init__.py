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

# Continuous states (images, video, text embeddings): flow / DDIM step rules, guidance and their one loop.
from textdiff.samplers.continuous import (  # noqa: E402
    CONTINUOUS_SAMPLERS, ContinuousOutput, build_continuous_sampler, sample_continuous,
)
from textdiff.samplers.ddim import DDIMSampler  # noqa: E402
from textdiff.samplers.flow import FlowDPMSolverSampler, FlowEulerSampler, FlowHeunSampler  # noqa: E402
from textdiff.samplers.guidance import ClassifierFreeGuidance, dynamic_threshold, static_threshold  # noqa: E402

__all__ += [
    "CONTINUOUS_SAMPLERS", "ClassifierFreeGuidance", "ContinuousOutput", "DDIMSampler", "FlowDPMSolverSampler",
    "FlowEulerSampler", "FlowHeunSampler", "build_continuous_sampler", "dynamic_threshold", "sample_continuous",
    "static_threshold",
]
