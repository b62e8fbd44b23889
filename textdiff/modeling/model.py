"""`TextDiffModel`: the one Transformer trunk + token head that every textdiff family builds on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from textdiff.modeling.cache import KVCache, build_attention_mask
from textdiff.modeling.configuration import ATTENTION_MODES, TextDiffConfig
from textdiff.modeling.layers import Block, TimeEmbedding, ZeroLinear, build_norm, rope_cos_sin


@dataclass
class TextDiffOutput(ModelOutput):
    """Output of `TextDiffModel.forward`."""

    logits: torch.Tensor | None = None
    """[B, L, V] token logits."""
    cache: KVCache | None = None
    """the KV cache, when `use_cache=True`."""
    last_hidden_state: torch.Tensor | None = None
    """[B, L, hidden] final normalised hidden states (input of the head)."""
    hidden_states: tuple[torch.Tensor, ...] | None = None
    """embeddings + every block's output, when `output_hidden_states=True`."""


class TextDiffPreTrainedModel(PreTrainedModel):
    config_class = TextDiffConfig
    config: TextDiffConfig
    base_model_prefix = "textdiff"
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ZeroLinear):
            init.zeros_(module.weight)
            init.zeros_(module.bias)


class TextDiffModel(TextDiffPreTrainedModel):
    """Token embedding (+[MASK]) -> pre-norm RMSNorm/RoPE/SwiGLU/GQA blocks -> RMSNorm -> token head.

    Called like an HF masked LM: `model(input_ids).logits` is [B, L, V]. The attention pattern comes from
    `config.attention_mode` (or the `attention_mode` argument, or an explicit 4-D boolean `attention_mask`).
    Config options swap in what converted HF checkpoints need (LayerNorm, learned absolute positions, a dense
    GELU MLP, biases, RoPE scaling, a separate head_dim); the defaults are the trunk described above.
    """

    _tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}

    def __init__(self, config: TextDiffConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.position_embedding_type == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(
            Block(
                hidden_size=config.hidden_size,
                num_heads=config.num_attention_heads,
                num_kv_heads=config.num_key_value_heads,
                intermediate_size=config.intermediate_size,
                rope_theta=config.rope_theta,
                rms_norm_eps=config.rms_norm_eps,
                time_conditioning=config.time_conditioning,
                head_dim=config.head_dim,
                norm_type=config.norm_type,
                mlp_type=config.mlp_type,
                hidden_act=config.hidden_act,
                qkv_bias=config.qkv_bias,
                attention_out_bias=config.attention_out_bias,
                mlp_bias=config.mlp_bias,
            )
            for _ in range(config.num_hidden_layers)
        )
        self.norm = build_norm(config.norm_type, config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.time_conditioning:
            self.time_embed = TimeEmbedding(config.time_embed_dim, config.hidden_size)
            self.final_adaln = ZeroLinear(config.hidden_size, 2 * config.hidden_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
        inputs_embeds: torch.Tensor | None = None,
        attention_mode: str | None = None,
        output_hidden_states: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> TextDiffOutput:
        """
        Args:
            input_ids: [B, L] token ids (or pass `inputs_embeds` [B, L, hidden]).
            attention_mask: [B, S] with 1 for real tokens and 0 for padding, S = cached + L; or a 4-D boolean
                mask [B|1, 1, L, S] (True = may attend) that replaces the mode's pattern entirely.
            t: [B] diffusion times in [0, 1]; required iff `config.time_conditioning`.
            position_ids: [B, L] absolute positions (default: cached length + arange(L)).
            cache / use_cache: the KV-cache decoding path (`KVCache`); new keys are appended.
            attention_mode: overrides `config.attention_mode` for this call.
        """
        cfg = self.config
        mode = attention_mode or cfg.attention_mode
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode {mode!r} is not one of {ATTENTION_MODES}")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [B, L, hidden]
        B, L = x.shape[:2]

        # 1. positions and the length contract
        if use_cache and cache is None:
            cache = KVCache(cfg.num_hidden_layers)
        offset = cache.next_position if cache is not None else 0
        num_keys = max(offset + L, cache.seq_len if cache is not None else 0)
        if offset + L > cfg.max_position_embeddings:
            raise ValueError(
                f"sequence length {offset + L} (cached {offset} + new {L}) exceeds the model's context "
                f"max_position_embeddings={cfg.max_position_embeddings}"
            )
        if position_ids is None:
            position_ids = torch.arange(offset, offset + L, device=x.device)[None].expand(B, L)
        if cfg.position_embedding_type == "learned":
            x = x + self.embed_positions(position_ids)  # [B, L, hidden]
            cos = sin = None
        else:
            cos, sin = rope_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta, x.dtype, cfg.rope_freq_scaling)

        # 2. attention pattern
        is_causal = False
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = attention_mask.bool()
        else:
            if attention_mask is not None and attention_mask.shape != (B, num_keys):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, num_keys)} "
                    "(cached + new positions)"
                )
            if attention_mask is not None and bool(attention_mask.all()):
                attention_mask = None  # no padding: let SDPA take its fastest path
            if mode == "causal" and attention_mask is None and offset == 0 and num_keys == L:
                mask, is_causal = None, True
            else:
                query_pos = torch.arange(offset, offset + L, device=x.device)
                key_pos = torch.arange(num_keys, device=x.device)
                mask = build_attention_mask(mode, query_pos, key_pos, attention_mask, cfg.block_size)

        # 3. time conditioning
        cond = None
        if cfg.time_conditioning:
            if t is None:
                raise ValueError("this model has time_conditioning=True: pass t ([B] times in [0, 1])")
            cond = self.time_embed(t.reshape(-1).expand(B) if t.numel() == 1 else t)  # [B, hidden]
        elif t is not None:
            raise ValueError("t was passed but config.time_conditioning is False")

        # 4. trunk and head
        all_hidden = [x] if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, is_causal, cond=cond, cache=cache, layer_idx=i)
            if all_hidden is not None:
                all_hidden.append(x)
        h = self.norm(x)
        if cond is not None:
            shift, scale = self.final_adaln(torch.nn.functional.silu(cond))[:, None].chunk(2, dim=-1)
            h = h * (1 + scale) + shift
        logits = self.lm_head(h)  # [B, L, V]
        return TextDiffOutput(
            logits=logits,
            cache=cache if use_cache else None,
            last_hidden_state=h,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )
