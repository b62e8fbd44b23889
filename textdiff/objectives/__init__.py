"""Training objectives: one file per family (noising + loss + likelihood estimate)."""

from __future__ import annotations

from textdiff.objectives.ar import AutoregressiveObjective
from textdiff.objectives.base import Objective, ObjectiveOutput
from textdiff.objectives.flow import FlowMatchingObjective
from textdiff.objectives.masked import MaskedDiffusionObjective, apply_mask, masked_diffusion_loss

__all__ = [
    "AutoregressiveObjective",
    "FlowMatchingObjective",
    "MaskedDiffusionObjective",
    "Objective",
    "ObjectiveOutput",
    "apply_mask",
    "masked_diffusion_loss",
]
