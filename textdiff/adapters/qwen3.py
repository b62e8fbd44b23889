"""`Qwen3ForCausalLM` <-> `TextDiffModel`: the Llama layout (one `attention_bias` for q/k/v/o, none by default) plus
RMSNorm over each head's queries and keys (`self_attn.q_norm` / `k_norm`, the trunk's `qk_norm`) and an
explicit
head_dim. An AR source for adaptation (the A2D recipe of dllm converts Qwen3 the same way)."""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import Qwen3Config

from textdiff.adapters.base import Same, TensorRule, UnsupportedArchitectureError
from textdiff.adapters.llama import LlamaAdapter


class Qwen3Adapter(LlamaAdapter):
    architecture: ClassVar[str] = "Qwen3ForCausalLM"
    config_class: ClassVar[type] = Qwen3Config

    def textdiff_config(self, hf_config: Any) -> dict[str, Any]:
        layer_types = getattr(hf_config, "layer_types", None) or []
        if getattr(hf_config, "use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
            raise UnsupportedArchitectureError(
                "Qwen3 sliding-window layers are not supported (textdiff attends to the whole sequence); "
                "convert a checkpoint with use_sliding_window=false"
            )
        return {**super().textdiff_config(hf_config), "qk_norm": True}

    def check_exportable(self, td_config: Any) -> None:
        super().check_exportable(td_config)
        if not td_config.qk_norm:
            raise UnsupportedArchitectureError(
                "Qwen3ForCausalLM always has q/k norms; this model has qk_norm=False"
            )
        if td_config.mlp_bias:
            raise UnsupportedArchitectureError("Qwen3ForCausalLM has no MLP biases")

    def structural_hf_kwargs(self, td_config: Any) -> dict[str, Any]:
        kwargs = super().structural_hf_kwargs(td_config)
        del kwargs["mlp_bias"]
        return kwargs

    def name_map(self, num_layers: int, td_config: Any) -> list[TensorRule]:
        rules = super().name_map(num_layers, td_config)
        p = self.base_model_prefix
        for i in range(num_layers):
            for norm in ("q_norm", "k_norm"):  # [head_dim] each, shared by all heads
                rules.append(
                    Same(f"{p}.layers.{i}.self_attn.{norm}.weight", f"layers.{i}.self_attn.{norm}.weight")
                )
        return rules
