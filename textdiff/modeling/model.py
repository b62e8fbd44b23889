"""`TextDiffModel`: the text model every textdiff family builds on, composed of parts: inputs (tokens, and
optionally a hybrid latent, continuous vectors, a condition prefix) -> the shared trunk -> heads (token logits, and
optionally vectors)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from textdiff.modeling.cache import KVCache
from textdiff.modeling.configuration import TextDiffConfig
from textdiff.modeling.heads import VectorHead, token_head
from textdiff.modeling.inputs import ConditionPrefix, LatentInput, VectorInput
from textdiff.modeling.mount import mount
from textdiff.modeling.pretrained import PartsPreTrainedModel
from textdiff.modeling.time_warp import TimeWarp
from textdiff.modeling.trunk import Trunk


@dataclass
class TextDiffOutput(ModelOutput):
    """Output of `TextDiffModel.forward` (every field is about the L input positions; a prefix is stripped)."""

    logits: torch.Tensor | None = None
    """[B, L, V] token logits."""
    cache: KVCache | None = None
    """the KV cache, when `use_cache=True`."""
    last_hidden_state: torch.Tensor | None = None
    """[B, L, hidden] final normalised hidden states (input of the heads)."""
    hidden_states: tuple[torch.Tensor, ...] | None = None
    """embeddings + every block's output, when `output_hidden_states=True`."""
    vectors: torch.Tensor | None = None
    """[B, L, vector_head_dim] output of the vector head, when the config has one."""


def _optional_trunk_kwargs(c: TextDiffConfig) -> dict:
    """q/k norm, RoPE precision and MoE options, read with defaults: configs saved before they existed load
    unchanged."""
    kwargs = {"qk_norm": getattr(c, "qk_norm", False), "rope_full_precision": getattr(c, "rope_full_precision", False)}
    if getattr(c, "mlp_type", "gated") == "moe":
        kwargs.update(num_experts=c.num_experts, num_experts_per_tok=c.num_experts_per_tok,
                      moe_intermediate_size=c.moe_intermediate_size,
                      shared_expert_intermediate_size=c.shared_expert_intermediate_size,
                      norm_topk_prob=c.norm_topk_prob, moe_expert_bias=c.moe_expert_bias,
                      moe_dense_layers=c.moe_dense_layers or ())
    return kwargs


class TextDiffPreTrainedModel(PartsPreTrainedModel):
    config_class = TextDiffConfig
    config: TextDiffConfig
    base_model_prefix = "textdiff"


class TextDiffModel(TextDiffPreTrainedModel):
    """Token embedding (+[MASK]) -> the shared trunk (pre-norm RMSNorm/RoPE/SwiGLU/GQA blocks) -> token head.

    Called like an HF masked LM: `model(input_ids).logits` is [B, L, V]. The attention pattern comes from
    `config.attention_mode` (or the `attention_mode` argument, or an explicit 4-D boolean `attention_mask`).
    Config options swap in what converted HF checkpoints need (LayerNorm, learned absolute positions, a dense
    GELU MLP, biases, RoPE scaling, a separate head_dim), and add the inputs and heads of other families (a
    hybrid latent, continuous vectors, a condition prefix, a vector head); all are off by default.

    Parts: `embed_tokens` (input), `trunk` (mounted: its weights keep the names `layers.0...`, `norm`, ...),
    `lm_head` (head); optionally `latent_in`, `vector_in`, `prefix_in`, `vector_head`.
    """

    _tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}

    def __init__(self, config: TextDiffConfig):
        super().__init__(config)
        c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        mount(self, "trunk", Trunk(
            hidden_size=c.hidden_size, num_layers=c.num_hidden_layers, num_heads=c.num_attention_heads,
            num_kv_heads=c.num_key_value_heads, intermediate_size=c.intermediate_size, head_dim=c.head_dim,
            rope_theta=c.rope_theta, rope_scaling=c.rope_freq_scaling, norm_eps=c.rms_norm_eps, norm_type=c.norm_type,
            mlp_type=c.mlp_type, hidden_act=c.hidden_act, qkv_bias=c.qkv_bias, attention_out_bias=c.attention_out_bias,
            mlp_bias=c.mlp_bias, position_embedding_type=c.position_embedding_type,
            max_position_embeddings=c.max_position_embeddings, attention_mode=c.attention_mode,
            block_size=c.block_size, time_conditioning=c.time_conditioning, time_embed_dim=c.time_embed_dim,
            **_optional_trunk_kwargs(c),
        ))
        self.lm_head = token_head(hidden_size=c.hidden_size, vocab_size=c.vocab_size)
        for name in ("time_embed", "final_adaln"):  # registered after the head before the parts refactor: keeping
            if name in self._modules:  # that order keeps a seeded model's init draws (and state-dict order) the same
                self._modules[name] = self._modules.pop(name)
        # the other families' parts come last, so a model without them has exactly the old modules in the old order
        if c.latent_dim is not None:
            self.latent_in = LatentInput(latent_dim=c.latent_dim, hidden_size=c.hidden_size,
                                         projection=c.latent_projection)
        if c.vector_dim is not None:
            self.vector_in = VectorInput(vector_dim=c.vector_dim, hidden_size=c.hidden_size,
                                         normalize=c.vector_normalize, zero_init=c.vector_zero_init,
                                         self_condition=c.vector_self_condition)
        if c.prefix_dim is not None:
            self.prefix_in = ConditionPrefix(condition_dim=c.prefix_dim, hidden_size=c.hidden_size)
        if c.vector_head_dim is not None:
            self.vector_head = VectorHead(hidden_size=c.hidden_size, out_dim=c.vector_head_dim, zero_init=True)
        if getattr(c, "time_warp_bins", None):  # continuous family: CDCD's time warp, saved with the weights
            self.time_warp = TimeWarp(c.time_warp_bins, learn=getattr(c, "time_warp_learn", True))
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
        *,
        latents: torch.Tensor | None = None,
        latent_positions: torch.Tensor | None = None,
        inputs_vectors: torch.Tensor | None = None,
        self_condition: torch.Tensor | None = None,
        prefix: torch.Tensor | None = None,
        block_offset: int = 0,
        **kwargs,
    ) -> TextDiffOutput:
        """
        Args:
            input_ids: [B, L] token ids (or pass `inputs_embeds` [B, L, hidden]).
            attention_mask: [B, S] with 1 for real tokens and 0 for padding, S = cached + (prefix) + L; or a 4-D
                boolean mask [B|1, 1, L, S] (True = may attend) that replaces the mode's pattern entirely.
            t: [B] diffusion times in [0, 1]; required iff `config.time_conditioning`.
            position_ids: [B, (prefix +) L] absolute positions (default: cached length + arange).
            cache / use_cache: the KV-cache decoding path (`KVCache`); new keys are appended.
            attention_mode: overrides `config.attention_mode` for this call.
            latents / latent_positions: [B, L, latent_dim] continuous latents added to the token embeddings at the
                positions where latent_positions [B, L] is True (everywhere when None); needs `config.latent_dim`.
            inputs_vectors / self_condition: [B, L, vector_dim] continuous inputs (alone, or added to the token
                embeddings) and the previous x0 estimate; need `config.vector_dim` (/ `vector_self_condition`).
            prefix: [B, P, prefix_dim or hidden] condition vectors put in front of the sequence (the outputs
                cover the L positions only); only on a call whose cache is empty.
            block_offset: block_causal attention blocks start at positions = block_offset (mod block_size);
                `generate` passes the prompt length, so its generation blocks are attention blocks.
        """
        cfg = self.config
        # 1. inputs -> [B, L, hidden]
        x = self._embed(input_ids, inputs_embeds, latents, latent_positions, inputs_vectors, self_condition)

        # 2. the condition prefix goes in front: [B, P + L, hidden]
        num_prefix = 0
        if prefix is not None:
            if cache is not None and cache.seq_len:
                raise ValueError(f"prefix= is for the first call of a cached decode; the cache already holds "
                                 f"{cache.seq_len} positions")
            prefix = self.prefix_in(prefix) if cfg.prefix_dim is not None else prefix  # [B, P, hidden]
            if prefix.shape[-1] != cfg.hidden_size:
                raise ValueError(f"prefix has width {prefix.shape[-1]}; pass hidden_size ({cfg.hidden_size}) vectors "
                                 "or set config.prefix_dim")
            num_prefix = prefix.shape[1]
            x = torch.cat([prefix.to(x.dtype), x], dim=1)

        # 3. trunk (attention mode and block size are read per call: recipes flip them after loading)
        out = self.trunk(
            x, t=t, position_ids=position_ids, attention_mask=attention_mask,
            attention_mode=attention_mode or cfg.attention_mode, block_size=cfg.block_size,
            block_offset=block_offset, cache=cache,
            use_cache=use_cache, output_hidden_states=output_hidden_states,
        )
        h, hidden_states = out.last_hidden_state, out.hidden_states
        if num_prefix:
            h = h[:, num_prefix:]  # [B, L, hidden]
            hidden_states = tuple(s[:, num_prefix:] for s in hidden_states) if hidden_states is not None else None

        # 4. heads
        return TextDiffOutput(
            logits=self.lm_head(h),  # [B, L, V]
            cache=out.cache,
            last_hidden_state=h,
            hidden_states=hidden_states,
            vectors=self.vector_head(h) if cfg.vector_head_dim is not None else None,  # [B, L, vector_head_dim]
        )

    def _embed(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        latents: torch.Tensor | None,
        latent_positions: torch.Tensor | None,
        inputs_vectors: torch.Tensor | None,
        self_condition: torch.Tensor | None,
    ) -> torch.Tensor:
        """Token embeddings (or inputs_embeds), + latents at their positions, + projected vectors: [B, L, hidden]."""
        cfg = self.config
        if input_ids is not None and inputs_embeds is not None or (
            input_ids is None and inputs_embeds is None and inputs_vectors is None
        ):
            raise ValueError("pass exactly one of input_ids and inputs_embeds (or inputs_vectors alone)")
        x = self.embed_tokens(input_ids) if input_ids is not None else inputs_embeds  # [B, L, hidden] or None
        if latents is not None:
            if cfg.latent_dim is None:
                raise ValueError("latents= was passed but the model has no latent input (config.latent_dim is None)")
            if x is None:
                raise ValueError("latents= augment token embeddings: pass input_ids (or inputs_embeds) too")
            x = self.latent_in(x, latents, latent_positions)
        elif latent_positions is not None:
            raise ValueError("latent_positions= was passed without latents=")
        if inputs_vectors is not None:
            if cfg.vector_dim is None:
                raise ValueError("inputs_vectors= was passed but the model has no vector input "
                                 "(config.vector_dim is None)")
            vectors = self.vector_in(inputs_vectors, self_condition)  # [B, L, hidden]
            x = vectors if x is None else x + vectors
        elif self_condition is not None:
            raise ValueError("self_condition= goes with inputs_vectors=")
        return x
