"""Architecture name -> adapter, with the error that says what to do for any other architecture."""

from __future__ import annotations

from typing import Any

from textdiff.adapters.base import ArchitectureAdapter, UnsupportedArchitectureError
from textdiff.adapters.dream import DreamAdapter
from textdiff.adapters.gpt2 import GPT2Adapter
from textdiff.adapters.llada import LLaDAAdapter
from textdiff.adapters.llada_moe import LLaDAMoEAdapter
from textdiff.adapters.llama import LlamaAdapter
from textdiff.adapters.mistral import MistralAdapter
from textdiff.adapters.qwen2 import Qwen2Adapter
from textdiff.adapters.qwen3 import Qwen3Adapter

ADAPTERS: dict[str, ArchitectureAdapter] = {
    adapter.architecture: adapter
    for adapter in (LlamaAdapter(), Qwen2Adapter(), MistralAdapter(), GPT2Adapter(), Qwen3Adapter(),
                    # released diffusion LMs (their classes live in the checkpoints' own modeling code)
                    LLaDAAdapter(), LLaDAMoEAdapter(), DreamAdapter())
}
_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM",
                  "gpt2": "GPT2LMHeadModel", "qwen3": "Qwen3ForCausalLM",
                  "llada": "LLaDAModelLM", "lladamoe": "LLaDAMoEModelLM", "Dream": "DreamModel"}


def model_type_is_llada_moe(hf_config: Any) -> bool:
    return getattr(hf_config, "model_type", None) == "llada" and bool(getattr(hf_config, "num_experts", None))


def architecture_of(hf_config: Any) -> str:
    """The HF class a config describes: `architectures[0]`, else the causal LM of its model_type."""
    architectures = getattr(hf_config, "architectures", None) or []
    if architectures:
        # LLaDA-MoE's hub config.json says model_type "llada" (dllm tells users to edit it to "lladamoe"): an
        # expert count is what tells the two layouts apart
        if architectures[0] == "LLaDAModelLM" and getattr(hf_config, "num_experts", None):
            return "LLaDAMoEModelLM"
        return architectures[0]
    if model_type_is_llada_moe(hf_config):
        return "LLaDAMoEModelLM"
    model_type = getattr(hf_config, "model_type", None)
    if model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type]
    raise UnsupportedArchitectureError(
        f"cannot tell the architecture of a config with model_type={model_type!r} and no `architectures`; "
        f"textdiff converts {', '.join(ADAPTERS)}"
    )


def get_adapter(architecture: str) -> ArchitectureAdapter:
    if architecture not in ADAPTERS:
        raise UnsupportedArchitectureError(
            f"architecture {architecture!r} is not supported; textdiff converts {', '.join(ADAPTERS)}. "
            "Another decoder-only family needs an ArchitectureAdapter (config translation + name map) in "
            "textdiff/adapters/, registered in textdiff/adapters/registry.py"
        )
    return ADAPTERS[architecture]
