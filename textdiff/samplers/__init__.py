"""Samplers: step rules (one per file), their one registry, and the two loops that drive them: `generate` for
masked token canvases and `sample_continuous` for flow / DDIM states (images, video, text embeddings)."""

from textdiff.samplers.ancestral import AncestralSampler
from textdiff.samplers.base import GenerateOutput, Sampler, SamplerState, StepOutput
from textdiff.samplers.continuous import ContinuousOutput, sample_continuous
from textdiff.samplers.ddim import DDIMSampler
from textdiff.samplers.dream import ConfidenceSampler
from textdiff.samplers.fastdllm import FactorSampler, ThresholdSampler
from textdiff.samplers.flow import (
    FlowDPMSolverSampler,
    FlowEulerSampler,
    FlowHeunSampler,
    FlowSD3DPMSolverSampler,
)
from textdiff.samplers.generate import CACHE_MODES, generate, generate_autoregressive
from textdiff.samplers.guidance import ClassifierFreeGuidance, dynamic_threshold, static_threshold
from textdiff.samplers.masked import (
    DecodeRegion,
    MaskedSampler,
    RemaskingSampler,
    add_gumbel_noise,
    num_transfer_tokens,
)
from textdiff.samplers.registry import (
    CONTINUOUS_SAMPLERS,
    REGISTRY,
    SAMPLERS,
    build_continuous_sampler,
    build_sampler,
    register_sampler,
    sampler_entry,
)
from textdiff.samplers.unipc import FlowUniPCSampler

__all__ = [
    "CACHE_MODES",
    "CONTINUOUS_SAMPLERS",
    "REGISTRY",
    "SAMPLERS",
    "AncestralSampler",
    "ClassifierFreeGuidance",
    "ConfidenceSampler",
    "ContinuousOutput",
    "DDIMSampler",
    "DecodeRegion",
    "FactorSampler",
    "FlowDPMSolverSampler",
    "FlowEulerSampler",
    "FlowHeunSampler",
    "FlowSD3DPMSolverSampler",
    "FlowUniPCSampler",
    "GenerateOutput",
    "MaskedSampler",
    "RemaskingSampler",
    "Sampler",
    "SamplerState",
    "StepOutput",
    "ThresholdSampler",
    "add_gumbel_noise",
    "build_continuous_sampler",
    "build_sampler",
    "dynamic_threshold",
    "generate",
    "generate_autoregressive",
    "num_transfer_tokens",
    "register_sampler",
    "sample_continuous",
    "sampler_entry",
    "static_threshold",
]
