"""`GPT2LMHeadModel` <-> `TextDiffModel`: LayerNorm, learned absolute positions, a dense GELU MLP and biases
everywhere; GPT-2 stores its projections as `Conv1D` ([in, out]) and fuses q|k|v into `c_attn`."""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import GPT2Config

from textdiff.adapters.base import (
    ArchitectureAdapter,
    Fused,
    Same,
    TensorRule,
    Transposed,
    UnsupportedArchitectureError,
    first_id,
)


class GPT2Adapter(ArchitectureAdapter):
    architecture: ClassVar[str] = "GPT2LMHeadModel"
    base_model_prefix: ClassVar[str] = "transformer"
    # causal-mask buffers that checkpoints written by older transformers carry
    ignored_tensors: ClassVar[tuple[str, ...]] = (r"\.attn\.bias$", r"\.attn\.masked_bias$")

    def textdiff_config(self, hf_config: Any) -> dict[str, Any]:
        unsupported = {
            "scale_attn_weights": (getattr(hf_config, "scale_attn_weights", True), True),
            "scale_attn_by_inverse_layer_idx": (getattr(hf_config, "scale_attn_by_inverse_layer_idx", False), False),
            "add_cross_attention": (getattr(hf_config, "add_cross_attention", False), False),
        }
        for name, (value, needed) in unsupported.items():
            if value != needed:
                raise UnsupportedArchitectureError(f"GPT-2 with {name}={value} is not supported (needs {needed})")
        hidden = hf_config.n_embd
        return dict(
            vocab_size=hf_config.vocab_size,
            hidden_size=hidden,
            num_hidden_layers=hf_config.n_layer,
            num_attention_heads=hf_config.n_head,
            num_key_value_heads=hf_config.n_head,
            intermediate_size=hf_config.n_inner or 4 * hidden,
            max_position_embeddings=hf_config.n_positions,
            rms_norm_eps=hf_config.layer_norm_epsilon,
            norm_type="layernorm",
            mlp_type="dense",
            hidden_act=hf_config.activation_function,
            position_embedding_type="learned",
            qkv_bias=True,
            attention_out_bias=True,
            mlp_bias=True,
            tie_word_embeddings=bool(hf_config.tie_word_embeddings),
            initializer_range=hf_config.initializer_range,
            bos_token_id=first_id(hf_config.bos_token_id),
            eos_token_id=first_id(hf_config.eos_token_id),
            pad_token_id=first_id(hf_config.pad_token_id),
        )

    def hf_config(self, td_config: Any, base: dict[str, Any] | None = None) -> Any:
        needed = {
            "norm_type": "layernorm", "mlp_type": "dense", "position_embedding_type": "learned", "qkv_bias": True,
            "attention_out_bias": True, "mlp_bias": True, "time_conditioning": False,
        }
        for name, value in needed.items():
            if getattr(td_config, name) != value:
                raise UnsupportedArchitectureError(
                    f"GPT2LMHeadModel cannot express {name}={getattr(td_config, name)!r} (it needs {value!r})"
                )
        if td_config.num_key_value_heads != td_config.num_attention_heads:
            raise UnsupportedArchitectureError("GPT2LMHeadModel has no grouped-query attention")
        if td_config.head_dim * td_config.num_attention_heads != td_config.hidden_size:
            raise UnsupportedArchitectureError("GPT2LMHeadModel needs head_dim * heads == hidden_size")
        kwargs = dict(base or {})
        for key in ("model_type", "transformers_version"):
            kwargs.pop(key, None)
        if base is None:
            kwargs.update(
                bos_token_id=td_config.bos_token_id, eos_token_id=td_config.eos_token_id,
                pad_token_id=td_config.pad_token_id, initializer_range=td_config.initializer_range,
            )
        kwargs.update(
            vocab_size=td_config.vocab_size,
            n_embd=td_config.hidden_size,
            n_layer=td_config.num_hidden_layers,
            n_head=td_config.num_attention_heads,
            n_inner=td_config.intermediate_size if td_config.intermediate_size != 4 * td_config.hidden_size else None,
            n_positions=td_config.max_position_embeddings,
            layer_norm_epsilon=td_config.rms_norm_eps,
            activation_function=td_config.hidden_act,
            tie_word_embeddings=td_config.tie_word_embeddings,
        )
        config = GPT2Config(**kwargs)
        if base is None:
            config.architectures = [self.architecture]
        return config

    def name_map(self, num_layers: int, td_config: Any) -> list[TensorRule]:
        p = self.base_model_prefix
        rules: list[TensorRule] = [
            Same(f"{p}.wte.weight", "embed_tokens.weight"),
            Same(f"{p}.wpe.weight", "embed_positions.weight"),
        ]
        for i in range(num_layers):
            hf, td = f"{p}.h.{i}", f"layers.{i}"
            qkv = [f"{td}.self_attn.{proj}" for proj in ("q_proj", "k_proj", "v_proj")]
            rules += [
                Same(f"{hf}.ln_1.weight", f"{td}.input_layernorm.weight"),
                Same(f"{hf}.ln_1.bias", f"{td}.input_layernorm.bias"),
                Fused(f"{hf}.attn.c_attn.weight", tuple(f"{n}.weight" for n in qkv), conv1d=True),
                Fused(f"{hf}.attn.c_attn.bias", tuple(f"{n}.bias" for n in qkv)),
                Transposed(f"{hf}.attn.c_proj.weight", f"{td}.self_attn.o_proj.weight"),
                Same(f"{hf}.attn.c_proj.bias", f"{td}.self_attn.o_proj.bias"),
                Same(f"{hf}.ln_2.weight", f"{td}.post_attention_layernorm.weight"),
                Same(f"{hf}.ln_2.bias", f"{td}.post_attention_layernorm.bias"),
                Transposed(f"{hf}.mlp.c_fc.weight", f"{td}.mlp.up_proj.weight"),
                Same(f"{hf}.mlp.c_fc.bias", f"{td}.mlp.up_proj.bias"),
                Transposed(f"{hf}.mlp.c_proj.weight", f"{td}.mlp.down_proj.weight"),
                Same(f"{hf}.mlp.c_proj.bias", f"{td}.mlp.down_proj.bias"),
            ]
        rules += [Same(f"{p}.ln_f.weight", "norm.weight"), Same(f"{p}.ln_f.bias", "norm.bias")]
        if not td_config.tie_word_embeddings:
            rules.append(Same("lm_head.weight", "lm_head.weight"))
        return rules

    @property
    def hf_embedding(self) -> str:
        return f"{self.base_model_prefix}.wte.weight"
