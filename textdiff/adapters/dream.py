"""Dream-v0 7B (`DreamModel` of the published `modeling_dream.py`, initialised from Qwen2.5-7B) <-> `TextDiffModel`.

The tensors are the Qwen2 layout (`model.layers.{i}.self_attn.{q,k,v}_proj` with biases, `o_proj` without,
SwiGLU `mlp`, `model.norm`, `lm_head`), so the name map is Qwen2's. What differs is what the model *is*: a
bidirectional masked diffusion model that keeps the AR shift (the logits at position i score token i + 1:
Dream's `generate` re-shifts them, `logits = cat([logits[:, :1], logits[:, :-1]])`), with [MASK] = 151666
(`<|mask|>`, inside its vocabulary). Its `generation_config.json` (alg, steps, temperature, ...) is carried
into `adapted_from` by `convert_checkpoint`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from textdiff.adapters.llada import released_token_id
from textdiff.adapters.llama import rope_to_hf
from textdiff.adapters.qwen2 import Qwen2Adapter

DREAM_MASK_ID, DREAM_EOT_ID = 151666, 151645  # <|mask|>, <|im_end|>


class DreamAdapter(Qwen2Adapter):
    architecture: ClassVar[str] = "DreamModel"
    released_diffusion: ClassVar[bool] = True
    mask_token: ClassVar[str] = "<|mask|>"
    eot_token: ClassVar[str] = "<|im_end|>"
    model_type: ClassVar[str] = "Dream"
    # DreamConfig defaults (configuration_dream.py) for keys a config.json may leave out
    config_defaults: ClassVar[dict[str, Any]] = dict(
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=22016,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=None,
        hidden_act="silu",
        max_position_embeddings=32768,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        rope_scaling=None,
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=None,
    )

    def textdiff_config(self, hf_config: Any) -> dict[str, Any]:
        config = super().textdiff_config(hf_config)
        vocab = config["vocab_size"]
        config.update(
            logit_shift=True,
            mask_token_id=released_token_id(hf_config, "mask_token_id", DREAM_MASK_ID, vocab),
            pad_token_id=released_token_id(hf_config, "pad_token_id", None, vocab),
            eot_token_id=released_token_id(hf_config, "eot_token_id", DREAM_EOT_ID, vocab),
        )
        return config

    def hf_config(self, td_config: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
        """The config.json of the Dream layout (a dict: the class is not part of transformers)."""
        self.check_exportable(td_config)
        config = dict(
            base
            or {
                "architectures": [self.architecture],
                "model_type": self.model_type,
                "initializer_range": td_config.initializer_range,
                "bos_token_id": td_config.bos_token_id,
                "eos_token_id": td_config.eos_token_id,
            }
        )
        structural = self.structural_hf_kwargs(td_config)
        rope = rope_to_hf(td_config)
        structural.pop("rope_parameters")
        theta = rope.pop("rope_theta")
        config.update(
            structural,
            rope_theta=theta,
            rope_scaling=None if rope["rope_type"] == "default" else rope,
            mask_token_id=td_config.mask_token_id,
            pad_token_id=td_config.pad_token_id,
        )
        return config
