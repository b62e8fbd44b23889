"""Autoregressive baseline on the same trunk in causal mode: `family: ar`.

Next-token cross-entropy, exact validation perplexity, greedy KV-cached decoding in `textdiff sample`. The
recipe's `objective` section has no options (`AutoregressiveOptions`).
"""

from __future__ import annotations

from dataclasses import dataclass

from textdiff.families.base import register_family
from textdiff.families.text import TextFamily
from textdiff.objectives.ar import AutoregressiveObjective

__all__ = ["ARFamily", "AutoregressiveOptions"]


@dataclass
class AutoregressiveOptions:
    """Next-token prediction has no options; the section exists so that every recipe reads alike."""


@register_family
class ARFamily(TextFamily):
    name = "ar"
    config_class = AutoregressiveOptions
    attention_mode = "causal"
    likelihood = "exact"

    def build_objective(self, options: AutoregressiveOptions, model) -> AutoregressiveObjective:
        return AutoregressiveObjective()
