"""LLaDA-MoE (inclusionAI/LLaDA-MoE-7B-A1B; `LLaDAMoEModelLM` of the published `modeling_lladamoe.py`, an
OLMoE-style layout) <-> `TextDiffModel` with the trunk's mixture-of-experts MLP (`mlp_type="moe"`).

Per layer: `self_attn.{q,k,v,o}_proj` (one `attention_bias`), per-head `q_norm` / `k_norm` (`qk_layernorm`),
`mlp.gate` (router) + `mlp.experts.{e}.{gate,up,down}_proj`, a `shared_expert` beside the MLP (when
`shared_expert_intermediate_size` is set) and an optional `mlp.expert_bias` buffer; layers with
`moe_layer_freq[i] == 0` keep a dense MLP of `dense_intermediate_size`. Bidirectional, no logit shift.

Routing follows the published forward, not every config key: softmax router probabilities (+ expert_bias),
top-k, *no* renormalisation (its `LLaDAMoESparseMoeBlock` sets `norm_topk_prob = False` whatever the config
says), and `moe_router_score_function`, `routed_scaling_factor`, `router_num_group` / `router_topk_group` are
not read by it (so they are recorded in `adapted_from` only).
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

from torch import Tensor

from textdiff.adapters.base import (
    ArchitectureAdapter,
    ConversionError,
    Same,
    TensorRule,
    UnsupportedArchitectureError,
    refuse_unexpressible,
)
from textdiff.adapters.llada import released_token_id
from textdiff.adapters.llama import rope_from_hf, rope_to_hf

logger = logging.getLogger(__name__)

# default of LLaDA2's sampler for the same tokenizer family (inclusionAI); the tokenizer's <|mask|> wins
LLADA_MOE_MASK_ID = 156895


class LLaDAMoEAdapter(ArchitectureAdapter):
    architecture: ClassVar[str] = "LLaDAMoEModelLM"
    base_model_prefix: ClassVar[str] = "model"
    ignored_tensors: ClassVar[tuple[str, ...]] = (r"rotary_emb\.inv_freq$",)
    released_diffusion: ClassVar[bool] = True
    mask_token: ClassVar[str] = "<|mask|>"
    eot_token: ClassVar[str] = "<|role_end|>"
    model_type: ClassVar[str] = "lladamoe"
    config_defaults: ClassVar[dict[str, Any]] = dict(
        num_key_value_heads=None,
        hidden_act="silu",
        max_position_embeddings=4096,
        initializer_range=0.02,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_scaling=None,
        attention_bias=False,
        clip_qkv=None,
        qk_layernorm=None,
        shared_expert_intermediate_size=None,
        moe_router_enable_expert_bias=None,
        partial_rotary_factor=1.0,
        norm_topk_prob=None,
        moe_layer_freq=[],
    )

    def textdiff_config(self, hf_config: Any) -> dict[str, Any]:
        c = hf_config
        if getattr(c, "clip_qkv", None) is not None:
            raise UnsupportedArchitectureError(f"LLaDA-MoE with clip_qkv={c.clip_qkv} is not supported")
        if float(getattr(c, "partial_rotary_factor", 1.0)) != 1.0:
            raise UnsupportedArchitectureError(
                f"LLaDA-MoE with partial_rotary_factor={c.partial_rotary_factor} is not supported (textdiff rotates "
                "the whole head)"
            )
        layers = c.num_hidden_layers
        freq = getattr(c, "moe_layer_freq", None)
        if not isinstance(freq, (list, tuple)) or len(freq) != layers:
            raise ConversionError(
                f"LLaDA-MoE moe_layer_freq must list one 0/1 per layer ({layers}), got {freq!r}"
            )
        if getattr(c, "norm_topk_prob", None):
            logger.warning(
                "LLaDA-MoE config says norm_topk_prob=True, but the published modeling code never "
                "renormalises the top-k weights; converting what the published code computes"
            )
        theta, scaling = rope_from_hf(_RopeView(c))
        heads = c.num_attention_heads
        vocab = c.vocab_size
        return dict(
            vocab_size=vocab,
            hidden_size=c.hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=c.num_key_value_heads or heads,
            head_dim=c.hidden_size // heads,
            intermediate_size=c.dense_intermediate_size,
            max_position_embeddings=c.max_position_embeddings,
            rope_theta=theta,
            rope_freq_scaling=scaling,
            rms_norm_eps=c.rms_norm_eps,
            hidden_act=c.hidden_act,
            qkv_bias=bool(c.attention_bias),
            attention_out_bias=bool(c.attention_bias),
            qk_norm=bool(c.qk_layernorm),
            mlp_type="moe",
            num_experts=c.num_experts,
            num_experts_per_tok=c.num_experts_per_tok,
            moe_intermediate_size=c.expert_intermediate_size,
            shared_expert_intermediate_size=c.shared_expert_intermediate_size,
            norm_topk_prob=False,
            moe_expert_bias=bool(getattr(c, "moe_router_enable_expert_bias", False)),
            moe_dense_layers=[i for i, f in enumerate(freq) if f == 0] or None,
            tie_word_embeddings=bool(c.tie_word_embeddings),
            initializer_range=getattr(c, "initializer_range", 0.02),
            logit_shift=False,
            mask_token_id=released_token_id(c, "mask_token_id", LLADA_MOE_MASK_ID, vocab),
            bos_token_id=released_token_id(c, "bos_token_id", None, vocab),
            eos_token_id=released_token_id(c, "eos_token_id", None, vocab),
            pad_token_id=released_token_id(c, "pad_token_id", None, vocab),
        )

    def check_state_dict(self, hf_config: Any, state_dict: dict[str, Tensor]) -> None:
        """Every MoE layer must hold exactly `num_experts` experts (a shape check cannot see extra ones)."""
        pattern = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.experts\.(\d+)\.")
        experts: dict[int, set[int]] = {}
        for name in state_dict:
            match = pattern.search(name)
            if match:
                experts.setdefault(int(match[1]), set()).add(int(match[2]))
        freq = hf_config.moe_layer_freq
        for layer in range(hf_config.num_hidden_layers):
            found = len(experts.get(layer, ()))
            wanted = hf_config.num_experts if freq[layer] else 0
            if found != wanted:
                raise ConversionError(
                    f"LLaDA-MoE checkpoint layer {layer} has {found} experts (model.layers.{layer}.mlp.experts.*) "
                    f"but config.json says num_experts={hf_config.num_experts}"
                    + ("" if freq[layer] else " and moe_layer_freq marks the layer dense")
                    + ": the weights do not match the config"
                )

    def check_exportable(self, td_config: Any) -> None:
        wrong = {
            "norm_type": (td_config.norm_type, "rmsnorm"),
            "mlp_type": (td_config.mlp_type, "moe"),
            "position_embedding_type": (td_config.position_embedding_type, "rope"),
            "time_conditioning": (td_config.time_conditioning, False),
            "mlp_bias": (td_config.mlp_bias, False),
            "norm_topk_prob": (td_config.norm_topk_prob, False),
            "attention_out_bias": (td_config.attention_out_bias, td_config.qkv_bias),
            "head_dim": (td_config.head_dim, td_config.hidden_size // td_config.num_attention_heads),
        }
        refuse_unexpressible(self.architecture, wrong)

    def hf_config(self, td_config: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
        """The config.json of the LLaDA-MoE layout (a dict: the class is not part of transformers)."""
        self.check_exportable(td_config)
        config = dict(
            base
            or {
                "architectures": [self.architecture],
                "model_type": self.model_type,
                "initializer_range": td_config.initializer_range,
                "partial_rotary_factor": 1.0,
            }
        )
        rope = rope_to_hf(td_config)
        theta = rope.pop("rope_theta")
        dense = set(td_config.moe_dense_layers or ())
        config.update(
            vocab_size=td_config.vocab_size,
            hidden_size=td_config.hidden_size,
            num_hidden_layers=td_config.num_hidden_layers,
            num_attention_heads=td_config.num_attention_heads,
            num_key_value_heads=td_config.num_key_value_heads,
            dense_intermediate_size=td_config.intermediate_size,
            expert_intermediate_size=td_config.moe_intermediate_size,
            shared_expert_intermediate_size=td_config.shared_expert_intermediate_size,
            num_experts=td_config.num_experts,
            num_experts_per_tok=td_config.num_experts_per_tok,
            moe_layer_freq=[0 if i in dense else 1 for i in range(td_config.num_hidden_layers)],
            moe_router_enable_expert_bias=td_config.moe_expert_bias,
            qk_layernorm=td_config.qk_norm,
            attention_bias=td_config.qkv_bias,
            hidden_act=td_config.hidden_act,
            max_position_embeddings=td_config.max_position_embeddings,
            rms_norm_eps=td_config.rms_norm_eps,
            rope_theta=theta,
            rope_scaling=None if rope["rope_type"] == "default" else rope,
            tie_word_embeddings=td_config.tie_word_embeddings,
            mask_token_id=td_config.mask_token_id,
        )
        if config.get("norm_topk_prob") is None:
            config["norm_topk_prob"] = False
        return config

    def name_map(self, num_layers: int, td_config: Any) -> list[TensorRule]:
        p = self.base_model_prefix
        dense = set(td_config.moe_dense_layers or ())
        rules: list[TensorRule] = [Same(f"{p}.embed_tokens.weight", "embed_tokens.weight")]
        for i in range(num_layers):
            hf, td = f"{p}.layers.{i}", f"layers.{i}"
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                rules.append(Same(f"{hf}.self_attn.{proj}.weight", f"{td}.self_attn.{proj}.weight"))
                if td_config.qkv_bias:
                    rules.append(Same(f"{hf}.self_attn.{proj}.bias", f"{td}.self_attn.{proj}.bias"))
            if td_config.qk_norm:
                for norm in ("q_norm", "k_norm"):
                    rules.append(Same(f"{hf}.self_attn.{norm}.weight", f"{td}.self_attn.{norm}.weight"))
            rules.append(Same(f"{hf}.input_layernorm.weight", f"{td}.input_layernorm.weight"))
            rules.append(
                Same(f"{hf}.post_attention_layernorm.weight", f"{td}.post_attention_layernorm.weight")
            )
            projections = ("gate_proj", "up_proj", "down_proj")
            if i in dense:
                rules += [Same(f"{hf}.mlp.{proj}.weight", f"{td}.mlp.{proj}.weight") for proj in projections]
                continue
            rules.append(
                Same(f"{hf}.mlp.gate.weight", f"{td}.mlp.gate.weight")
            )  # router [num_experts, hidden]
            for e in range(td_config.num_experts):
                rules += [
                    Same(f"{hf}.mlp.experts.{e}.{proj}.weight", f"{td}.mlp.experts.{e}.{proj}.weight")
                    for proj in projections
                ]
            if (
                td_config.shared_expert_intermediate_size
            ):  # beside the MLP in LLaDA-MoE, inside it in the trunk
                rules += [
                    Same(f"{hf}.shared_expert.{proj}.weight", f"{td}.mlp.shared_expert.{proj}.weight")
                    for proj in projections
                ]
            if td_config.moe_expert_bias:
                rules.append(Same(f"{hf}.mlp.expert_bias", f"{td}.mlp.expert_bias"))
        rules.append(Same(f"{p}.norm.weight", "norm.weight"))
        if not td_config.tie_word_embeddings:
            rules.append(Same("lm_head.weight", "lm_head.weight"))
        return rules

    @property
    def hf_embedding(self) -> str:
        return f"{self.base_model_prefix}.embed_tokens.weight"


class _RopeView:
    """The rope keys of a LLaDA-MoE config in the v4 layout `rope_from_hf` reads (rope_theta + rope_scaling)."""

    def __init__(self, config: Any):
        self.rope_theta = config.rope_theta
        self.rope_scaling = getattr(config, "rope_scaling", None)
        self.rope_parameters = None
