"""LoRA adaptation through `peft`: train low-rank updates of the trunk's projections, merge them at the end.

For models too large to fine-tune fully; the trunk's linear layers have the Llama names whatever the source
family, so one default target list serves every converted checkpoint.
"""

from __future__ import annotations

from torch import nn

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def apply_lora(
    model: nn.Module,
    *,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    target_modules: list[str] | tuple[str, ...] | None = None,
) -> nn.Module:
    """Wrap `model` in a peft `PeftModel` whose only trainable parameters are LoRA factors of rank `rank`.

    target_modules: names of the linear layers to adapt; None = those of DEFAULT_TARGET_MODULES the model has
    (a GPT-2 conversion has no gate_proj).
    """
    from peft import LoraConfig, get_peft_model

    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    if target_modules is None:
        target_modules = [name for name in DEFAULT_TARGET_MODULES if name in present]
    missing = sorted(set(target_modules) - present)
    if missing:
        raise ValueError(f"LoRA target modules {missing} are not linear layers of this model (it has {sorted(present)})")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules))
    return get_peft_model(model, config)


def is_lora(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merge_lora(model: nn.Module) -> nn.Module:
    """The plain model with the LoRA updates folded into its weights (what the final checkpoint stores)."""
    return model.merge_and_unload() if is_lora(model) else model
