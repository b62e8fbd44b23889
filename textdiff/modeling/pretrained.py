"""`PartsPreTrainedModel`: the HF base every model built from parts shares (one weight init for all of them)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from textdiff.modeling.layers import LayerNorm, RMSNorm

__all__ = ["PartsPreTrainedModel"]


class PartsPreTrainedModel(PreTrainedModel):
    """HF's init (normal(initializer_range) linear and embedding weights, zero biases, unit norm gains), plus:
    layers flagged `zero_init` (adaLN-Zero projections, zero-init inputs and heads) start at exactly zero, with
    adaLN gate biases at -1 where `gates_start_closed` (the DiT's blocks start as the identity); learned tables
    held as bare parameters (the DiT's frame / patch positions) are drawn like embeddings."""

    _no_split_modules = ["Block"]
    supports_gradient_checkpointing = True  # the Trunk's blocks (trainer.gradient_checkpointing)

    # HF's gradient_checkpointing_enable sets these on every module it walks; the trunk is mounted (a plain
    # attribute, not a submodule), so the model holds them on the trunk's behalf
    @property
    def gradient_checkpointing(self) -> bool:
        return self.trunk.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enable: bool) -> None:
        self.trunk.gradient_checkpointing = bool(enable)

    @property
    def _gradient_checkpointing_func(self):
        return self.trunk._gradient_checkpointing_func

    @_gradient_checkpointing_func.setter
    def _gradient_checkpointing_func(self, func) -> None:
        self.trunk._gradient_checkpointing_func = func
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if getattr(module, "zero_init", False):
            init.zeros_(module.weight)
            if module.bias is not None:
                bias = torch.zeros_like(module.bias)
                if getattr(module, "gates_start_closed", False):
                    # chunks (shift1, scale1, gate1, shift2, scale2, gate2): (1 + gate) = 0 -> identity block
                    h = bias.shape[0] // 6
                    bias[2 * h: 3 * h] = -1.0
                    bias[5 * h:] = -1.0
                init.copy_(module.bias, bias)
        elif not isinstance(module, (nn.Linear, nn.Embedding, RMSNorm, LayerNorm, nn.LayerNorm)):
            for param in module.parameters(recurse=False):
                init.normal_(param, std=self.config.initializer_range)
