"""Building blocks of the shared trunk: RMSNorm, RoPE, grouped-query SDPA attention, SwiGLU, adaLN-Zero."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from textdiff.modeling.cache import KVCache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 like Llama, so low-precision training keeps a stable scale.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [B, L, head_dim] for integer positions [B, L] (computed on the fly: no buffer to load)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq  # [B, L, head_dim/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, L, head_dim]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, L, D] by the half-split convention of Llama/GPT-NeoX (what HF checkpoints expect)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class Attention(nn.Module):
    """Multi-head attention with grouped-query K/V heads through `scaled_dot_product_attention`."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, rope_theta: float):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = hidden_size // num_heads
        self.rope_theta = rope_theta
        self.q_proj = nn.Linear(hidden_size, num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        cache: KVCache | None = None,
        layer_idx: int = 0,
    ) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, L, D]
        k = self.k_proj(x).view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, L, D]
        v = self.v_proj(x).view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, L, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)  # [B, Hkv, S, D] with S = cached + L
        if self.num_kv_heads != self.num_heads:
            groups = self.num_heads // self.num_kv_heads
            k = k.repeat_interleave(groups, dim=1)  # [B, H, S, D]
            v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)  # [B, H, L, D]
        return self.o_proj(out.transpose(1, 2).reshape(B, L, -1))


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ZeroLinear(nn.Linear):
    """A linear layer that `TextDiffModel._init_weights` initialises to exactly zero (adaLN-Zero)."""


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)); optional adaLN-Zero modulation.

    With time conditioning each norm output is modulated as norm(x) * (1 + scale) + shift and each residual
    branch is scaled by (1 + gate). All three come from a zero-initialised projection of the time embedding,
    so at init the block is exactly the unconditioned block (DiT gates the branch to zero instead; we keep the
    trunk intact so an unconditioned or converted checkpoint can be fine-tuned with time conditioning).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        intermediate_size: int,
        rope_theta: float,
        rms_norm_eps: float,
        time_conditioning: bool,
    ):
        super().__init__()
        self.input_layernorm = RMSNorm(hidden_size, rms_norm_eps)
        self.self_attn = Attention(hidden_size, num_heads, num_kv_heads, rope_theta)
        self.post_attention_layernorm = RMSNorm(hidden_size, rms_norm_eps)
        self.mlp = SwiGLU(hidden_size, intermediate_size)
        self.adaln = ZeroLinear(hidden_size, 6 * hidden_size) if time_conditioning else None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        cond: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
    ) -> torch.Tensor:
        h = self.input_layernorm(x)
        if self.adaln is None:
            x = x + self.self_attn(h, cos, sin, mask, is_causal, cache, layer_idx)
            return x + self.mlp(self.post_attention_layernorm(x))
        mod = self.adaln(F.silu(cond))[:, None]  # [B, 1, 6*hidden]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        h = h * (1 + scale1) + shift1
        x = x + (1 + gate1) * self.self_attn(h, cos, sin, mask, is_causal, cache, layer_idx)
        h = self.post_attention_layernorm(x) * (1 + scale2) + shift2
        return x + (1 + gate2) * self.mlp(h)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of continuous times t in [0, 1] (scaled by 1000 like DDPM's integer steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device).float() / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]  # [B, half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbedding(nn.Module):
    def __init__(self, embed_dim: int, hidden_size: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.linear_1 = nn.Linear(embed_dim, hidden_size)
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.embed_dim).to(self.linear_1.weight.dtype)  # [B, embed_dim]
        return self.linear_2(F.silu(self.linear_1(emb)))
