"""`MistralForCausalLM` <-> `TextDiffModel`: the Llama layout (no biases) with an optional sliding window.

The trunk has no sliding-window attention, so a converted Mistral keeps its logits exact by capping its context
at `sliding_window` (within the window, sliding-window causal attention is plain causal attention). Converting
back restores the original context from the stored HF config.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from transformers import MistralConfig

from textdiff.adapters.base import UnsupportedArchitectureError
from textdiff.adapters.llama import LlamaAdapter

logger = logging.getLogger(__name__)


class MistralAdapter(LlamaAdapter):
    architecture: ClassVar[str] = "MistralForCausalLM"
    config_class: ClassVar[type] = MistralConfig

    def attention_biases(self, hf_config: Any) -> tuple[bool, bool]:
        return False, False

    def context_length(self, hf_config: Any) -> int:
        window = getattr(hf_config, "sliding_window", None)
        if window is not None and window < hf_config.max_position_embeddings:
            logger.warning(
                "Mistral sliding_window=%d < max_position_embeddings=%d: the converted model's context is capped "
                "at %d tokens, where it equals the original exactly", window, hf_config.max_position_embeddings,
                window,
            )
            return window
        return hf_config.max_position_embeddings

    def check_biases(self, td_config: Any) -> None:
        if td_config.qkv_bias or td_config.attention_out_bias or td_config.mlp_bias:
            raise UnsupportedArchitectureError("MistralForCausalLM has no attention or MLP biases")

    def structural_hf_kwargs(self, td_config: Any) -> dict[str, Any]:
        kwargs = super().structural_hf_kwargs(td_config)
        del kwargs["attention_bias"], kwargs["mlp_bias"]
        return kwargs

    def hf_config(self, td_config: Any, base: dict[str, Any] | None = None) -> Any:
        config = super().hf_config(td_config, base)
        if base is not None and base.get("sliding_window") == td_config.max_position_embeddings:
            config.max_position_embeddings = base["max_position_embeddings"]  # undo the cap of context_length
        return config
