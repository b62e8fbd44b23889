"""`LlamaForCausalLM` <-> `TextDiffModel`: the trunk's own layout (RMSNorm, RoPE, GQA, SwiGLU) under `model.`."""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import LlamaConfig

from textdiff.adapters.base import (
    ArchitectureAdapter,
    Same,
    TensorRule,
    UnsupportedArchitectureError,
    first_id,
    refuse_unexpressible,
)
from textdiff.modeling.configuration import ROPE_SCALING_TYPES


def rope_from_hf(hf_config: Any) -> tuple[float, dict | None]:
    """(rope_theta, rope_freq_scaling) of an HF config, transformers v5 (`rope_parameters`) or v4 layout."""
    params = getattr(hf_config, "rope_parameters", None)
    if params is None:  # transformers < 5
        params = {**(getattr(hf_config, "rope_scaling", None) or {}), "rope_theta": hf_config.rope_theta}
    params = dict(params)
    theta = float(params.pop("rope_theta", 10000.0))
    kind = params.pop("rope_type", params.pop("type", "default"))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedArchitectureError(
            f"partial_rotary_factor={params['partial_rotary_factor']} is not supported (textdiff rotates the "
            "whole head)"
        )
    params.pop("partial_rotary_factor", None)
    if kind == "default":
        return theta, None
    if kind not in ROPE_SCALING_TYPES:
        raise UnsupportedArchitectureError(
            f"RoPE type {kind!r} is not supported; textdiff converts default, {', '.join(ROPE_SCALING_TYPES)}"
        )
    if kind in ("llama3", "yarn") and "original_max_position_embeddings" not in params:
        raise UnsupportedArchitectureError(f"RoPE type {kind!r} needs original_max_position_embeddings in the config")
    return theta, {"rope_type": kind, **params}


def rope_to_hf(td_config: Any) -> dict:
    scaling = dict(td_config.rope_freq_scaling or {"rope_type": "default"})
    return {**scaling, "rope_theta": td_config.rope_theta}


class LlamaAdapter(ArchitectureAdapter):
    architecture: ClassVar[str] = "LlamaForCausalLM"
    base_model_prefix: ClassVar[str] = "model"
    config_class: ClassVar[type] = LlamaConfig
    ignored_tensors: ClassVar[tuple[str, ...]] = (r"rotary_emb\.inv_freq$",)

    # ------------------------------------------------------------------ config
    def attention_biases(self, hf_config: Any) -> tuple[bool, bool]:
        """(qkv_bias, attention_out_bias) of the HF config."""
        bias = bool(getattr(hf_config, "attention_bias", False))
        return bias, bias

    def context_length(self, hf_config: Any) -> int:
        return hf_config.max_position_embeddings

    def textdiff_config(self, hf_config: Any) -> dict[str, Any]:
        theta, scaling = rope_from_hf(hf_config)
        qkv_bias, out_bias = self.attention_biases(hf_config)
        heads = hf_config.num_attention_heads
        return dict(
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            num_hidden_layers=hf_config.num_hidden_layers,
            num_attention_heads=heads,
            num_key_value_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
            head_dim=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads,
            intermediate_size=hf_config.intermediate_size,
            max_position_embeddings=self.context_length(hf_config),
            rope_theta=theta,
            rope_freq_scaling=scaling,
            rms_norm_eps=hf_config.rms_norm_eps,
            norm_type="rmsnorm",
            mlp_type="gated",
            hidden_act=hf_config.hidden_act,
            position_embedding_type="rope",
            qkv_bias=qkv_bias,
            attention_out_bias=out_bias,
            mlp_bias=bool(getattr(hf_config, "mlp_bias", False)),
            tie_word_embeddings=bool(hf_config.tie_word_embeddings),
            initializer_range=getattr(hf_config, "initializer_range", 0.02),
            bos_token_id=first_id(getattr(hf_config, "bos_token_id", None)),
            eos_token_id=first_id(getattr(hf_config, "eos_token_id", None)),
            pad_token_id=first_id(getattr(hf_config, "pad_token_id", None)),
        )

    def check_exportable(self, td_config: Any) -> None:
        """Raise if the trunk uses an option this HF class cannot express."""
        self.check_biases(td_config)
        wrong = {
            "norm_type": (td_config.norm_type, "rmsnorm"),
            "mlp_type": (td_config.mlp_type, "gated"),
            "position_embedding_type": (td_config.position_embedding_type, "rope"),
            "time_conditioning": (td_config.time_conditioning, False),
        }
        refuse_unexpressible(self.architecture, wrong)

    def check_biases(self, td_config: Any) -> None:
        if td_config.qkv_bias != td_config.attention_out_bias:
            raise UnsupportedArchitectureError(
                f"{self.architecture} has one attention_bias for q/k/v/o; this model has qkv_bias="
                f"{td_config.qkv_bias}, attention_out_bias={td_config.attention_out_bias}"
            )

    def structural_hf_kwargs(self, td_config: Any) -> dict[str, Any]:
        return dict(
            vocab_size=td_config.vocab_size,
            hidden_size=td_config.hidden_size,
            num_hidden_layers=td_config.num_hidden_layers,
            num_attention_heads=td_config.num_attention_heads,
            num_key_value_heads=td_config.num_key_value_heads,
            head_dim=td_config.head_dim,
            intermediate_size=td_config.intermediate_size,
            max_position_embeddings=td_config.max_position_embeddings,
            rope_parameters=rope_to_hf(td_config),
            rms_norm_eps=td_config.rms_norm_eps,
            hidden_act=td_config.hidden_act,
            attention_bias=td_config.qkv_bias,
            mlp_bias=td_config.mlp_bias,
            tie_word_embeddings=td_config.tie_word_embeddings,
        )

    def hf_config(self, td_config: Any, base: dict[str, Any] | None = None) -> Any:
        self.check_exportable(td_config)
        kwargs = dict(base or {})
        for key in ("model_type", "transformers_version"):
            kwargs.pop(key, None)
        if base is None:
            kwargs.update(
                bos_token_id=td_config.bos_token_id, eos_token_id=td_config.eos_token_id,
                pad_token_id=td_config.pad_token_id, initializer_range=td_config.initializer_range,
            )
        kwargs.update(self.structural_hf_kwargs(td_config))
        kwargs.pop("rope_scaling", None)
        kwargs.pop("rope_theta", None)
        config = self.config_class(**kwargs)
        if base is None:
            config.architectures = [self.architecture]
        return config

    # ------------------------------------------------------------------ tensors
    def name_map(self, num_layers: int, td_config: Any) -> list[TensorRule]:
        p = self.base_model_prefix
        rules: list[TensorRule] = [Same(f"{p}.embed_tokens.weight", "embed_tokens.weight")]
        for i in range(num_layers):
            hf, td = f"{p}.layers.{i}", f"layers.{i}"
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                rules.append(Same(f"{hf}.self_attn.{proj}.weight", f"{td}.self_attn.{proj}.weight"))
                has_bias = td_config.attention_out_bias if proj == "o_proj" else td_config.qkv_bias
                if has_bias:
                    rules.append(Same(f"{hf}.self_attn.{proj}.bias", f"{td}.self_attn.{proj}.bias"))
            for proj in ("gate_proj", "up_proj", "down_proj"):
                rules.append(Same(f"{hf}.mlp.{proj}.weight", f"{td}.mlp.{proj}.weight"))
                if td_config.mlp_bias:
                    rules.append(Same(f"{hf}.mlp.{proj}.bias", f"{td}.mlp.{proj}.bias"))
            rules.append(Same(f"{hf}.input_layernorm.weight", f"{td}.input_layernorm.weight"))
            rules.append(Same(f"{hf}.post_attention_layernorm.weight", f"{td}.post_attention_layernorm.weight"))
        rules.append(Same(f"{p}.norm.weight", "norm.weight"))
        if not td_config.tie_word_embeddings:
            rules.append(Same("lm_head.weight", "lm_head.weight"))
        return rules

    @property
    def hf_embedding(self) -> str:
        return f"{self.base_model_prefix}.embed_tokens.weight"
