"""`Qwen2ForCausalLM` <-> `TextDiffModel`: the Llama layout with biases on q/k/v (none on o_proj or the MLP)."""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import Qwen2Config

from textdiff.adapters.base import UnsupportedArchitectureError
from textdiff.adapters.llama import LlamaAdapter


class Qwen2Adapter(LlamaAdapter):
    architecture: ClassVar[str] = "Qwen2ForCausalLM"
    config_class: ClassVar[type] = Qwen2Config

    def attention_biases(self, hf_config: Any) -> tuple[bool, bool]:
        return True, False

    def textdiff_config(self, hf_config: Any) -> dict[str, Any]:
        layer_types = getattr(hf_config, "layer_types", None) or []
        if getattr(hf_config, "use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
            raise UnsupportedArchitectureError(
                "Qwen2 sliding-window layers are not supported (textdiff attends to the whole sequence); "
                "convert a checkpoint with use_sliding_window=false"
            )
        return super().textdiff_config(hf_config)

    def check_biases(self, td_config: Any) -> None:
        if not td_config.qkv_bias or td_config.attention_out_bias or td_config.mlp_bias:
            raise UnsupportedArchitectureError(
                "Qwen2ForCausalLM needs biases on q/k/v only (qkv_bias=True, attention_out_bias=False, "
                "mlp_bias=False)"
            )

    def structural_hf_kwargs(self, td_config: Any) -> dict[str, Any]:
        kwargs = super().structural_hf_kwargs(td_config)
        del kwargs["attention_bias"], kwargs["mlp_bias"]
        if td_config.head_dim == td_config.hidden_size // td_config.num_attention_heads:
            del kwargs["head_dim"]  # Qwen2Config has no such field; HF derives it (and reads it when set)
        return kwargs

