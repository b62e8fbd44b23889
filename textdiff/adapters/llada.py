"""LLaDA-8B (Base / Instruct / 1.5; `LLaDAModelLM` of the published `modeling_llada.py`) <-> `TextDiffModel`.

The published checkpoint is an OLMo-style tree of LLaMA blocks: `model.transformer.wte` (embedding),
`blocks.{i}.attn_norm / q_proj / k_proj / v_proj / attn_out / ff_norm / ff_proj (gate) / up_proj / ff_out
(down)`, `ln_f` and `ff_out` (the head). It is a masked diffusion model as it stands: bidirectional attention,
no logit shift, [MASK] = 126336 (`<|mdm_mask|>`, a reserved row of its 126464-row embedding), EOS 126081, EoT
126348. Only the block layout the released checkpoints use is accepted (llama blocks, RMSNorm, RoPE, no biases
except optional q/k/v ones); anything else is refused by name.
"""

from __future__ import annotations

from typing import Any, ClassVar

from textdiff.adapters.base import (
    ArchitectureAdapter,
    ConversionError,
    Same,
    TensorRule,
    UnsupportedArchitectureError,
    first_id,
    refuse_unexpressible,
)

LLADA_MASK_ID, LLADA_EOS_ID, LLADA_EOT_ID = 126336, 126081, 126348
_ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "relu": "relu"}  # LLaDA activation_type -> ACT2FN name


def released_token_id(hf_config: Any, key: str, default: int | None, vocab_size: int) -> int | None:
    """A special-token id of a released model: its config's value, else the published default when the
    vocabulary holds it (a tiny test config does not); an id outside the vocabulary is an error."""
    raw = getattr(hf_config, "raw", None)
    value = raw.get(key) if raw is not None else getattr(hf_config, key, None)
    value = first_id(value)
    if value is None:
        return default if default is not None and default < vocab_size else None
    if not 0 <= value < vocab_size:
        raise ConversionError(f"config {key}={value} is outside the vocabulary of {vocab_size} rows")
    return value


class LLaDAAdapter(ArchitectureAdapter):
    architecture: ClassVar[str] = "LLaDAModelLM"
    base_model_prefix: ClassVar[str] = "model"
    released_diffusion: ClassVar[bool] = True
    mask_token: ClassVar[str] = "<|mdm_mask|>"
    eot_token: ClassVar[str] = "<|eot_id|>"
    model_type: ClassVar[str] = "llada"
    # ModelConfig defaults of configuration_llada.py for the structural keys (mask / eos / pad handled apart)
    config_defaults: ClassVar[dict[str, Any]] = dict(
        d_model=768,
        n_heads=12,
        n_kv_heads=None,
        n_layers=12,
        mlp_ratio=4,
        mlp_hidden_size=None,
        activation_type="swiglu",
        block_type="sequential",
        block_group_size=1,
        alibi=False,
        rope=False,
        rope_full_precision=True,
        multi_query_attention=None,
        attention_layer_norm=False,
        input_emb_norm=False,
        layer_norm_type="default",
        layer_norm_with_affine=True,
        rms_norm_eps=1e-5,
        max_sequence_length=1024,
        rope_theta=10000.0,
        include_qkv_bias=False,
        include_bias=False,
        bias_for_layer_norm=None,
        scale_logits=False,
        vocab_size=50257,
        embedding_size=50304,
        weight_tying=True,
        clip_qkv=None,
        init_std=0.02,
    )

    # ------------------------------------------------------------------ config
    def textdiff_config(self, hf_config: Any) -> dict[str, Any]:
        c = hf_config
        needed = {
            "block_type": "llama",
            "layer_norm_type": "rms",
            "rope": True,
            "alibi": False,
            "attention_layer_norm": False,
            "input_emb_norm": False,
            "scale_logits": False,
            "block_group_size": 1,
            "layer_norm_with_affine": True,
            "include_bias": False,
            "clip_qkv": None,
        }
        for key, value in needed.items():
            if getattr(c, key, value) != value:
                raise UnsupportedArchitectureError(
                    f"LLaDA with {key}={getattr(c, key)!r} is not supported (the released checkpoints have {value!r})"
                )
        if getattr(c, "bias_for_layer_norm", None):
            raise UnsupportedArchitectureError(
                "LLaDA with bias_for_layer_norm=True is not supported (RMSNorm gains only)"
            )
        activation = str(c.activation_type)
        if activation not in _ACTIVATIONS:
            raise UnsupportedArchitectureError(
                f"LLaDA activation_type {activation!r} is not supported; textdiff converts {', '.join(_ACTIVATIONS)}"
            )
        heads = c.n_heads
        kv_heads = c.n_kv_heads or (1 if getattr(c, "multi_query_attention", None) else heads)
        vocab = getattr(c, "embedding_size", None) or c.vocab_size  # the padded embedding rows
        return dict(
            vocab_size=vocab,
            hidden_size=c.d_model,
            num_hidden_layers=c.n_layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=c.d_model // heads,
            intermediate_size=c.mlp_hidden_size or c.mlp_ratio * c.d_model,
            max_position_embeddings=c.max_sequence_length,
            rope_theta=float(c.rope_theta),
            rms_norm_eps=c.rms_norm_eps,
            norm_type="rmsnorm",
            mlp_type="gated",
            hidden_act=_ACTIVATIONS[activation],
            position_embedding_type="rope",
            qkv_bias=bool(getattr(c, "include_qkv_bias", False)),
            tie_word_embeddings=bool(c.weight_tying),
            initializer_range=getattr(c, "init_std", 0.02),
            rope_full_precision=bool(getattr(c, "rope_full_precision", True)),
            logit_shift=False,
            mask_token_id=released_token_id(c, "mask_token_id", LLADA_MASK_ID, vocab),
            eos_token_id=released_token_id(c, "eos_token_id", LLADA_EOS_ID, vocab),
            pad_token_id=released_token_id(c, "pad_token_id", None, vocab),
            eot_token_id=released_token_id(c, "eot_token_id", LLADA_EOT_ID, vocab),
        )

    def check_exportable(self, td_config: Any) -> None:
        wrong = {
            "norm_type": (td_config.norm_type, "rmsnorm"),
            "mlp_type": (td_config.mlp_type, "gated"),
            "position_embedding_type": (td_config.position_embedding_type, "rope"),
            "time_conditioning": (td_config.time_conditioning, False),
            "rope_freq_scaling": (td_config.rope_freq_scaling, None),
            "attention_out_bias": (td_config.attention_out_bias, False),
            "mlp_bias": (td_config.mlp_bias, False),
            "qk_norm": (getattr(td_config, "qk_norm", False), False),
            "head_dim": (td_config.head_dim, td_config.hidden_size // td_config.num_attention_heads),
        }
        if td_config.hidden_act not in _ACTIVATIONS:
            wrong["hidden_act"] = (td_config.hidden_act, "one of " + ", ".join(_ACTIVATIONS))
        refuse_unexpressible(self.architecture, wrong)

    def hf_config(self, td_config: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
        """The config.json of the LLaDA layout (a dict: the class is not part of transformers)."""
        self.check_exportable(td_config)
        config = dict(
            base
            or {
                "architectures": [self.architecture],
                "model_type": self.model_type,
                "init_std": td_config.initializer_range,
            }
        )
        original_vocab = config.get("vocab_size", td_config.vocab_size)
        config.update(
            d_model=td_config.hidden_size,
            n_heads=td_config.num_attention_heads,
            n_kv_heads=td_config.num_key_value_heads,
            n_layers=td_config.num_hidden_layers,
            mlp_hidden_size=td_config.intermediate_size,
            max_sequence_length=td_config.max_position_embeddings,
            rope_theta=td_config.rope_theta,
            rms_norm_eps=td_config.rms_norm_eps,
            include_qkv_bias=td_config.qkv_bias,
            weight_tying=td_config.tie_word_embeddings,
            activation_type=td_config.hidden_act,
            embedding_size=td_config.vocab_size,
            vocab_size=min(original_vocab, td_config.vocab_size),
            block_type="llama",
            layer_norm_type="rms",
            rope=True,
            rope_full_precision=getattr(td_config, "rope_full_precision", False),
            mask_token_id=td_config.mask_token_id,
            eos_token_id=td_config.eos_token_id,
            pad_token_id=td_config.pad_token_id,
        )
        return config

    # ------------------------------------------------------------------ tensors
    def name_map(self, num_layers: int, td_config: Any) -> list[TensorRule]:
        p = f"{self.base_model_prefix}.transformer"
        rules: list[TensorRule] = [Same(f"{p}.wte.weight", "embed_tokens.weight")]
        for i in range(num_layers):
            hf, td = f"{p}.blocks.{i}", f"layers.{i}"
            rules.append(Same(f"{hf}.attn_norm.weight", f"{td}.input_layernorm.weight"))
            for proj in ("q_proj", "k_proj", "v_proj"):
                rules.append(Same(f"{hf}.{proj}.weight", f"{td}.self_attn.{proj}.weight"))
                if td_config.qkv_bias:
                    rules.append(Same(f"{hf}.{proj}.bias", f"{td}.self_attn.{proj}.bias"))
            rules += [
                Same(f"{hf}.attn_out.weight", f"{td}.self_attn.o_proj.weight"),
                Same(f"{hf}.ff_norm.weight", f"{td}.post_attention_layernorm.weight"),
                Same(f"{hf}.ff_proj.weight", f"{td}.mlp.gate_proj.weight"),  # act(ff_proj(x)) * up_proj(x)
                Same(f"{hf}.up_proj.weight", f"{td}.mlp.up_proj.weight"),
                Same(f"{hf}.ff_out.weight", f"{td}.mlp.down_proj.weight"),
            ]
        rules.append(Same(f"{p}.ln_f.weight", "norm.weight"))
        if not td_config.tie_word_embeddings:
            rules.append(Same(f"{p}.ff_out.weight", "lm_head.weight"))
        return rules

    @property
    def hf_embedding(self) -> str:
        return f"{self.base_model_prefix}.transformer.wte.weight"
