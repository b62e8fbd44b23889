"""Training objectives: one file per family (noising + loss + likelihood estimate)."""

from __future__ import annotations

from typing import Any

from textdiff.objectives.ar import AutoregressiveObjective
from textdiff.objectives.base import Objective, ObjectiveOutput
from textdiff.objectives.flow import FlowMatchingObjective
from textdiff.objectives.masked import MaskedDiffusionObjective, apply_mask, masked_diffusion_loss

__all__ = [
    "OBJECTIVES",
    "AutoregressiveObjective",
    "FlowMatchingObjective",
    "MaskedDiffusionObjective",
    "Objective",
    "ObjectiveOutput",
    "apply_mask",
    "build_objective",
    "masked_diffusion_loss",
]

OBJECTIVES: dict[str, type[Objective]] = {
    "masked": MaskedDiffusionObjective,
    "ar": AutoregressiveObjective,
    "flow": FlowMatchingObjective,
}


def build_objective(name: str, **kwargs: Any) -> Objective:
    """Build an objective by name ("masked" | "ar" | "flow") from its keyword arguments."""
    if name not in OBJECTIVES:
        valid = ", ".join(sorted(OBJECTIVES))
        raise ValueError(f"unknown objective {name!r}; valid names: {valid}")
    return OBJECTIVES[name](**kwargs)
