"""Building blocks of the shared trunk: RMSNorm / LayerNorm, RoPE (with frequency scaling; axial 3-D for patches),
grouped-query SDPA attention (optional per-head q/k RMSNorm), gated (SwiGLU) and dense (GPT-2) MLPs (and the
mixture of experts of `moe.py`), adaLN-Zero, the timestep embedding.

The defaults of every builder are the original trunk (RMSNorm, RoPE, SwiGLU, no biases); the other options exist
so that HF causal LMs (Llama, Qwen2, Mistral, GPT-2) convert into the same trunk (`textdiff.adapters`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

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


class LayerNorm(nn.LayerNorm):
    """LayerNorm with weight and bias (GPT-2); same (dim, eps) signature as RMSNorm."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__(dim, eps=eps)


def build_norm(norm_type: str, dim: int, eps: float) -> nn.Module:
    """"rmsnorm" -> RMSNorm, "layernorm" -> LayerNorm (with bias)."""
    if norm_type == "rmsnorm":
        return RMSNorm(dim, eps)
    if norm_type == "layernorm":
        return LayerNorm(dim, eps)
    raise ValueError(f"unknown norm_type {norm_type!r}; valid: rmsnorm, layernorm")


def rope_inv_freq(
    head_dim: int, theta: float, scaling: dict | None = None, device: torch.device | None = None
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim/2] of RoPE and the factor that multiplies cos/sin (1 except for YaRN).

    scaling (HF `rope_parameters` minus rope_theta): None (plain), {"rope_type": "linear", "factor"} (positions
    divided by factor), {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"} (Llama 3.1: long wavelengths divided by factor, short ones kept, a smooth
    ramp between), {"rope_type": "yarn", "factor", "original_max_position_embeddings", "beta_fast"=32,
    "beta_slow"=1, "attention_factor"|"mscale"/"mscale_all_dim", "truncate"=True} (YaRN, arXiv 2309.00071).
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim  # [head_dim/2]
    inv_freq = 1.0 / (theta**exponents)
    if scaling is None:
        return inv_freq, 1.0
    kind, factor = scaling.get("rope_type"), float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor, 1.0
    if kind == "llama3":
        context = scaling["original_max_position_embeddings"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > context / low, inv_freq / factor, inv_freq)
        smooth = (context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= context / high) & (wavelen <= context / low)
        return torch.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        return _yarn_inv_freq(inv_freq, head_dim, theta, factor, scaling)
    raise ValueError(f"unsupported rope_type {kind!r}; valid: linear, llama3, yarn")


def _yarn_inv_freq(
    inv_freq: torch.Tensor, head_dim: int, theta: float, factor: float, scaling: dict
) -> tuple[torch.Tensor, float]:
    """YaRN: interpolate (divide by factor) the low frequencies, keep the high ones, ramp in between by the
    number of rotations each dimension makes over the original context; scale attention by 0.1 ln(factor) + 1."""
    context = scaling["original_max_position_embeddings"]
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention_factor = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)

    def dim_of(rotations: float) -> float:  # the dimension that turns `rotations` times over the context
        return head_dim * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    positions = torch.arange(head_dim // 2, dtype=torch.float32, device=inv_freq.device)
    ramp = ((positions - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (keep the frequency), 0: interpolate (divide by factor)
    return inv_freq / factor * (1 - keep) + inv_freq * keep, float(attention_factor)


def rope_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype, scaling: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [B, L, head_dim] for integer positions [B, L] (computed on the fly: no buffer to load)."""
    inv_freq, attention_factor = rope_inv_freq(head_dim, theta, scaling, device=position_ids.device)
    freqs = position_ids.float()[..., None] * inv_freq  # [B, L, head_dim/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, L, head_dim]
    if attention_factor != 1.0:
        return (emb.cos() * attention_factor).to(dtype), (emb.sin() * attention_factor).to(dtype)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def axial_rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [1, L, head_dim] for 3-D integer positions [L, 3] (time, row, column), in the half-split layout of
    `apply_rope` (the DiT's patches). The head_dim / 2 rotation pairs are split between the axes (rows and columns
    ceil(pairs / 3) each, time the rest), each axis with its own frequency ladder. A row of zeros gives
    cos = 1, sin = 0 (no rotation; used for text tokens)."""
    pairs = head_dim // 2
    spatial = -(-pairs // 3)
    angles = []
    for axis, size in enumerate((pairs - 2 * spatial, spatial, spatial)):
        inv_freq = 1.0 / (theta ** (torch.arange(size, device=positions.device).float() / max(size, 1)))
        angles.append(positions[:, axis].float()[:, None] * inv_freq)  # [L, size]
    angles = torch.cat(angles, dim=-1)  # [L, head_dim / 2]
    emb = torch.cat([angles, angles], dim=-1)[None]  # [1, L, head_dim]
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, L, D] by the half-split convention of Llama/GPT-NeoX (what HF checkpoints expect)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class Attention(nn.Module):
    """Multi-head attention with grouped-query K/V heads through `scaled_dot_product_attention`.

    RoPE is applied when the caller passes cos/sin tables; with learned absolute positions it passes None.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        rope_theta: float,
        *,
        head_dim: int | None = None,
        qkv_bias: bool = False,
        out_bias: bool = False,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim or hidden_size // num_heads
        self.rope_theta = rope_theta
        self.q_proj = nn.Linear(hidden_size, num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden_size, bias=out_bias)
        if qk_norm:  # Qwen3 / LLaDA-MoE / OLMoE: RMSNorm over each head's query and key, before RoPE
            self.q_norm = RMSNorm(self.head_dim, norm_eps)
            self.k_norm = RMSNorm(self.head_dim, norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
        mask: torch.Tensor | None,
        is_causal: bool,
        cache: KVCache | None = None,
        layer_idx: int = 0,
    ) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.num_heads, self.head_dim)  # [B, L, H, D]
        k = self.k_proj(x).view(B, L, self.num_kv_heads, self.head_dim)  # [B, L, Hkv, D]
        if "q_norm" in self._modules:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, H, L, D], [B, Hkv, L, D]
        v = self.v_proj(x).view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, L, D]
        if cos is not None:
            if cos.dtype != q.dtype:  # float32 tables (rope_full_precision): rotate in float32, as LLaDA does
                q, k = apply_rope(q.float(), cos, sin).to(q.dtype), apply_rope(k.float(), cos, sin).to(k.dtype)
            else:
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
    """Gated MLP down(act(gate(x)) * up(x)); with the default act="silu" this is SwiGLU (Llama, Qwen2, Mistral)."""

    def __init__(self, hidden_size: int, intermediate_size: int, *, act: str = "silu", bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act = F.silu if act == "silu" else ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DenseMLP(nn.Module):
    """Ungated MLP down(act(up(x))) with biases (GPT-2: act="gelu_new")."""

    def __init__(self, hidden_size: int, intermediate_size: int, *, act: str = "gelu_new", bias: bool = True):
        super().__init__()
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


def build_mlp(mlp_type: str, hidden_size: int, intermediate_size: int, *, act: str, bias: bool,
              **moe_options) -> nn.Module:
    """"gated" -> SwiGLU-style gated MLP, "dense" -> GPT-2 style MLP, "moe" -> mixture of gated experts
    (`moe_options`: MoEMLP's num_experts, top_k, shared_intermediate_size, norm_topk_prob, expert_bias)."""
    if mlp_type == "moe":
        from textdiff.modeling.moe import MoEMLP  # moe.py builds its experts from this module's SwiGLU

        return MoEMLP(hidden_size, intermediate_size, act=act, bias=bias, **moe_options)
    if moe_options:
        raise ValueError(f"MoE options {sorted(moe_options)} need mlp_type='moe', got {mlp_type!r}")
    if mlp_type == "gated":
        return SwiGLU(hidden_size, intermediate_size, act=act, bias=bias)
    if mlp_type == "dense":
        return DenseMLP(hidden_size, intermediate_size, act=act, bias=bias)
    raise ValueError(f"unknown mlp_type {mlp_type!r}; valid: gated, dense, moe")


class ZeroLinear(nn.Linear):
    """A linear layer that the models' `_init_weights` initialises to exactly zero (adaLN-Zero, zero-init inputs).

    With `gates_start_closed` set on a block's adaLN projection, the gate biases start at -1 instead (DiT: every
    block starts as the identity)."""

    zero_init = True
    gates_start_closed = False


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
        *,
        head_dim: int | None = None,
        norm_type: str = "rmsnorm",
        mlp_type: str = "gated",
        hidden_act: str = "silu",
        qkv_bias: bool = False,
        attention_out_bias: bool = False,
        mlp_bias: bool = False,
        qk_norm: bool = False,
        moe_options: dict | None = None,
    ):
        super().__init__()
        self.input_layernorm = build_norm(norm_type, hidden_size, rms_norm_eps)
        self.self_attn = Attention(
            hidden_size, num_heads, num_kv_heads, rope_theta, head_dim=head_dim, qkv_bias=qkv_bias,
            out_bias=attention_out_bias, qk_norm=qk_norm, norm_eps=rms_norm_eps,
        )
        self.post_attention_layernorm = build_norm(norm_type, hidden_size, rms_norm_eps)
        self.mlp = build_mlp(mlp_type, hidden_size, intermediate_size, act=hidden_act, bias=mlp_bias,
                             **(moe_options or {}))
        self.adaln = ZeroLinear(hidden_size, 6 * hidden_size) if time_conditioning else None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
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
