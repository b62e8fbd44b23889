"""Masked (absorbing-state) diffusion, MDLM / LLaDA: `family: masked`.

The recipe's `objective` section is `MaskedDiffusionOptions` (schedule, eps, antithetic and its sampler,
normalization, random truncation, logit shift, attention-mask annealing); the model is the bidirectional
`TextDiffModel`; validation reports the ELBO upper bound; `textdiff sample` decodes with any masked rule.
"""

from __future__ import annotations

from textdiff.families.base import register_family
from textdiff.families.text import TextFamily
from textdiff.objectives.masked import MaskedDiffusionObjective, MaskedDiffusionOptions

__all__ = ["MaskedFamily"]


@register_family
class MaskedFamily(TextFamily):
    name = "masked"
    config_class = MaskedDiffusionOptions
    attention_mode = "bidirectional"
    likelihood = "bound"

    def check_recipe(self, recipe) -> None:
        super().check_recipe(recipe)
        if recipe.objective.normalization == "answer" and not recipe.data.task:
            raise ValueError("objective.normalization='answer' normalises by SFT answer lengths: it needs data.task")

    def build_objective(self, options: MaskedDiffusionOptions, model) -> MaskedDiffusionObjective:
        return MaskedDiffusionObjective(**vars(options), mask_token_id=model.config.mask_token_id)
