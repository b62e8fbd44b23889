"""The trunk every textdiff model shares: positions -> attention pattern -> time conditioning -> pre-norm blocks ->
final norm (+ final adaLN).

It only ever sees hidden states [B, S, hidden]: inputs (`inputs.py`) make them, heads (`heads.py`) read them. It is
built from keyword arguments, `Trunk(hidden_size=..., num_layers=..., num_heads=..., ...)`. `TextDiffModel` and
`DiTModel` mount theirs (`mount.py`), so its weights keep their checkpoint names (`layers.0...`, `norm`,
`time_embed`, `final_adaln`, `embed_positions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from textdiff.modeling.cache import KVCache, build_attention_mask
from textdiff.modeling.configuration import ATTENTION_MODES, POSITION_EMBEDDING_TYPES
from textdiff.modeling.layers import Block, TimeEmbedding, ZeroLinear, build_norm, rope_cos_sin

__all__ = ["Trunk", "TrunkOutput"]


@dataclass
class TrunkOutput:
    last_hidden_state: torch.Tensor
    """[B, S, hidden] after the final norm (and the final adaLN when time-conditioned)."""
    hidden_states: tuple[torch.Tensor, ...] | None = None
    """the input (after learned positions) + every block's output, when `output_hidden_states=True`."""
    cache: KVCache | None = None
    """the KV cache, when `use_cache=True`."""


class Trunk(nn.Module):
    """Pre-norm Transformer blocks (RMSNorm/LayerNorm, RoPE or learned positions, GQA SDPA attention, gated or dense
    MLP or a mixture of experts) with optional adaLN-Zero time conditioning, attention modes and a KV cache.

    Modules, in registration order (their names are checkpoint keys): `time_embed` (time conditioning),
    `embed_positions` (learned positions), `layers`, `norm`, `final_adaln` (time conditioning).

    The keyword arguments are `TextDiffConfig`'s fields (documented there) under shorter names: num_layers =
    num_hidden_layers, num_heads / num_kv_heads = num_attention_heads / num_key_value_heads, norm_eps =
    rms_norm_eps, rope_scaling = rope_freq_scaling; max_position_embeddings=None means no length limit (positions
    from `rope=`); the q/k-norm and MoE options keep their config names. Beyond them, gates_start_closed: adaLN gate biases start at -1, so every block starts as the
    identity (DiT) instead of as the unconditioned block.

    `gradient_checkpointing` (set by HF's `model.gradient_checkpointing_enable()`, i.e. trainer.gradient_checkpointing)
    recomputes each block in the backward pass instead of storing its activations: same gradients, less memory.
    """

    gradient_checkpointing = False
    _gradient_checkpointing_func = None  # HF sets a partial of torch.utils.checkpoint.checkpoint (non-reentrant)

    def __init__(
        self,
        *,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        intermediate_size: int,
        head_dim: int | None = None,
        rope_theta: float = 10000.0,
        rope_scaling: dict | None = None,
        norm_eps: float = 1e-6,
        norm_type: str = "rmsnorm",
        mlp_type: str = "gated",
        hidden_act: str = "silu",
        qkv_bias: bool = False,
        attention_out_bias: bool = False,
        mlp_bias: bool = False,
        position_embedding_type: str = "rope",
        max_position_embeddings: int | None = None,
        attention_mode: str = "bidirectional",
        block_size: int = 32,
        time_conditioning: bool = False,
        time_embed_dim: int = 128,
        gates_start_closed: bool = False,
        qk_norm: bool = False,
        num_experts: int | None = None,
        num_experts_per_tok: int | None = None,
        moe_intermediate_size: int | None = None,
        shared_expert_intermediate_size: int | None = None,
        norm_topk_prob: bool = False,
        moe_expert_bias: bool = False,
        moe_dense_layers: list[int] | tuple[int, ...] = (),
        rope_full_precision: bool = False,
    ):
        super().__init__()
        self.rope_full_precision = rope_full_precision
        if position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(f"position_embedding_type {position_embedding_type!r} is not one of "
                             f"{POSITION_EMBEDDING_TYPES}")
        if position_embedding_type == "learned" and max_position_embeddings is None:
            raise ValueError("learned positions need max_position_embeddings (the size of the position table)")
        if gates_start_closed and not time_conditioning:
            raise ValueError("gates_start_closed needs time_conditioning (the gates are adaLN's)")
        num_kv_heads = num_kv_heads or num_heads
        self.head_dim = head_dim or hidden_size // num_heads
        self.rope_theta, self.rope_scaling = rope_theta, rope_scaling
        self.position_embedding_type, self.max_position_embeddings = position_embedding_type, max_position_embeddings
        self.attention_mode, self.block_size = attention_mode, block_size
        if time_conditioning:
            self.time_embed = TimeEmbedding(time_embed_dim, hidden_size)
        if position_embedding_type == "learned":
            self.embed_positions = nn.Embedding(max_position_embeddings, hidden_size)
        moe_options = None
        if mlp_type == "moe":
            if num_experts is None or num_experts_per_tok is None or moe_intermediate_size is None:
                raise ValueError("mlp_type 'moe' needs num_experts, num_experts_per_tok and moe_intermediate_size")
            moe_options = dict(num_experts=num_experts, top_k=num_experts_per_tok, norm_topk_prob=norm_topk_prob,
                               shared_intermediate_size=shared_expert_intermediate_size, expert_bias=moe_expert_bias)

        def block(i: int) -> Block:  # a MoE trunk may keep some layers dense (gated MLP of intermediate_size)
            moe = moe_options is not None and i not in moe_dense_layers
            return Block(
                hidden_size=hidden_size, num_heads=num_heads, num_kv_heads=num_kv_heads,
                intermediate_size=moe_intermediate_size if moe else intermediate_size, rope_theta=rope_theta,
                rms_norm_eps=norm_eps, time_conditioning=time_conditioning, head_dim=self.head_dim,
                norm_type=norm_type, mlp_type=mlp_type if moe or moe_options is None else "gated",
                hidden_act=hidden_act, qkv_bias=qkv_bias, attention_out_bias=attention_out_bias, mlp_bias=mlp_bias,
                qk_norm=qk_norm, moe_options=moe_options if moe else None,
            )

        self.layers = nn.ModuleList(block(i) for i in range(num_layers))
        if gates_start_closed:
            for layer in self.layers:
                layer.adaln.gates_start_closed = True
        self.norm = build_norm(norm_type, hidden_size, norm_eps)
        if time_conditioning:
            self.final_adaln = ZeroLinear(hidden_size, 2 * hidden_size)

    @property
    def time_conditioning(self) -> bool:
        return "time_embed" in self._modules

    def forward(
        self,
        x: torch.Tensor,
        *,
        t: torch.Tensor | float | None = None,
        cond: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        attention_mode: str | None = None,
        block_size: int | None = None,
        block_offset: int = 0,
        cache: KVCache | None = None,
        use_cache: bool = False,
        skip_layers: list[int] | tuple[int, ...] = (),
        output_hidden_states: bool = False,
    ) -> TrunkOutput:
        """
        Args:
            x: [B, S, hidden] input hidden states.
            t: [B] (or one) diffusion time / noise level in [0, 1]; required iff the trunk is time-conditioned.
            cond: [B, hidden] extra conditioning added to the time embedding (the DiT's pooled caption).
            position_ids: [B, S] absolute positions (default: cached length + arange(S)).
            rope: precomputed (cos, sin) [B|1, S, head_dim] replacing the 1-D RoPE tables (the DiT's axial RoPE).
            attention_mask: [B, cached + S] with 1 for real tokens and 0 for padding; or a 4-D boolean mask
                [B|1, 1, S, cached + S] (True = may attend) that replaces the mode's pattern entirely.
            attention_mode / block_size: the attention pattern (default: the trunk's own).
            block_offset: block-causal blocks start at positions = block_offset (mod block_size).
            cache / use_cache: the KV-cache decoding path (`KVCache`); new keys are appended (or written at
                `cache.write_at`).
            skip_layers: indices of blocks to skip (skip-layer guidance's degraded pass).
        """
        mode = attention_mode or self.attention_mode
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode {mode!r} is not one of {ATTENTION_MODES}")
        B, L = x.shape[:2]

        # 1. positions and the length contract
        if use_cache and cache is None:
            cache = KVCache(len(self.layers))
        offset = cache.next_position if cache is not None else 0
        num_keys = max(offset + L, cache.seq_len if cache is not None else 0)
        if self.max_position_embeddings is not None and position_ids is not None and L:
            # explicit positions (left padding, BD3-LM's [x_t ; x_0] that repeats them): the limit is on positions
            if int(position_ids.max()) >= self.max_position_embeddings:
                raise ValueError(f"position {int(position_ids.max())} exceeds the model's context "
                                 f"max_position_embeddings={self.max_position_embeddings}")
        elif self.max_position_embeddings is not None and offset + L > self.max_position_embeddings:
            raise ValueError(
                f"sequence length {offset + L} (cached {offset} + new {L}) exceeds the model's context "
                f"max_position_embeddings={self.max_position_embeddings}"
            )
        if rope is None and position_ids is None:
            position_ids = torch.arange(offset, offset + L, device=x.device)[None].expand(B, L)
        if rope is not None:
            cos, sin = rope
        elif self.position_embedding_type == "learned":
            x = x + self.embed_positions(position_ids)  # [B, L, hidden]
            cos = sin = None
        else:
            rope_dtype = torch.float32 if self.rope_full_precision else x.dtype
            cos, sin = rope_cos_sin(position_ids, self.head_dim, self.rope_theta, rope_dtype, self.rope_scaling)

        # 2. attention pattern
        mask, is_causal = self._attention_pattern(mode, attention_mask, B, L, offset, num_keys, x.device,
                                                  block_size or self.block_size, block_offset)

        # 3. time conditioning: one vector per sequence drives every block's adaLN
        cond = self._time_condition(t, cond, B, x.device)

        # 4. blocks, final norm (+ final adaLN)
        all_hidden = [x] if output_hidden_states else None
        # gradient checkpointing: keep only each block's input, recompute its activations in the backward pass
        # (self.layers.training: the trunk itself is mounted, so model.train() / .eval() reach its layers, not it)
        recompute = self.gradient_checkpointing and self.layers.training and torch.is_grad_enabled() and cache is None
        checkpoint = self._gradient_checkpointing_func or partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
        for i, layer in enumerate(self.layers):
            if i in skip_layers:
                continue
            if recompute:
                x = checkpoint(layer, x, cos, sin, mask, is_causal, cond=cond, cache=None, layer_idx=i)
            else:
                x = layer(x, cos, sin, mask, is_causal, cond=cond, cache=cache, layer_idx=i)
            if all_hidden is not None:
                all_hidden.append(x)
        h = self.norm(x)
        if cond is not None:
            shift, scale = self.final_adaln(F.silu(cond))[:, None].chunk(2, dim=-1)  # [B, 1, hidden] each
            h = h * (1 + scale) + shift
        return TrunkOutput(
            last_hidden_state=h,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            cache=cache if use_cache else None,
        )

    def _attention_pattern(
        self, mode: str, attention_mask: torch.Tensor | None, B: int, L: int, offset: int, num_keys: int,
        device: torch.device, block_size: int, block_offset: int = 0,
    ) -> tuple[torch.Tensor | None, bool]:
        """The SDPA mask [B|1, 1, L, num_keys] (True = may attend) or None, and whether SDPA may use is_causal."""
        if attention_mask is not None and attention_mask.dim() == 4:
            return attention_mask.bool(), False
        if attention_mask is not None and attention_mask.shape != (B, num_keys):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, num_keys)} "
                "(cached + new positions)"
            )
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # no padding: let SDPA take its fastest path
        if mode == "causal" and attention_mask is None and offset == 0 and num_keys == L:
            return None, True
        query_pos = torch.arange(offset, offset + L, device=device)
        key_pos = torch.arange(num_keys, device=device)
        return build_attention_mask(mode, query_pos, key_pos, attention_mask, block_size, block_offset), False

    def _time_condition(
        self, t: torch.Tensor | float | None, cond: torch.Tensor | None, B: int, device: torch.device
    ) -> torch.Tensor | None:
        """[B, hidden] time embedding (+ cond), or None for a trunk without time conditioning."""
        if not self.time_conditioning:
            if t is not None:
                raise ValueError("t was passed but config.time_conditioning is False")
            if cond is not None:
                raise ValueError("cond was passed but the trunk has no time conditioning to add it to")
            return None
        if t is None:
            raise ValueError("this model has time_conditioning=True: pass t ([B] times in [0, 1])")
        t = torch.as_tensor(t, device=device).reshape(-1)
        if t.numel() not in (1, B):
            raise ValueError(f"t has {t.numel()} values for a batch of {B}")
        emb = self.time_embed(t.expand(B))  # [B, hidden]
        return emb if cond is None else emb + cond
