"""`PlannerModel` (model_type "textdiff_planner"): paragraph autoencoder + latent diffusion planner, from the
shared parts.

- encoder: token embedding -> the shared `Trunk` (bidirectional) over [k learned queries ; paragraph] (or the
  paragraph alone, taking its first k states) -> Linear to width d -> tanh (bounded, PLANNER) or `l2_scaled`
  (norm sqrt(d), LD4LG); with `latent_kl` a second Linear gives log-variances (PLANNER's VAE, tanh on the mean).
- decoder: a causal `TextDiffModel` whose `ConditionPrefix` (the slots -> embedding adapter, d -> its width) puts
  the k slots in front of the text (PLANNER's KV prefix). It can be a converted pretrained LM (SmolLM2-135M).
- denoiser (the planner, when `denoiser_layers` > 0): Linear d -> hidden over the k noisy slots, a prefix of the
  condition slots (the prompt encoded by the same encoder, Linear d -> hidden) or of a learned null condition
  (CFG), the shared `Trunk` with adaLN-Zero time conditioning (bidirectional, joint attention as PLANNER's
  prefix "cross attention"), a zero-init `VectorHead` back to d: the x0 / eps / v prediction of the k slots.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

from textdiff.modeling import TextDiffConfig, TextDiffModel, Trunk, VectorHead
from textdiff.modeling.inputs import l2_scaled
from textdiff.modeling.pretrained import PartsPreTrainedModel

__all__ = ["LATENT_NORMS", "PlannerConfig", "PlannerModel"]

LATENT_NORMS = ("tanh", "l2")


class PlannerConfig(PretrainedConfig):
    """Sizes of the encoder, the latent slots, the denoiser, and the decoder's own `TextDiffConfig` (a dict).

    Args:
        vocab_size / hidden_size / encoder_layers / num_attention_heads / num_key_value_heads / intermediate_size:
            the encoder trunk (its token embedding covers the decoder's vocabulary).
        max_position_embeddings: the encoder's context: k queries + the longest paragraph or prompt.
        num_latents: k slots per paragraph (>= 1).
        latent_dim: d, the width of a slot.
        latent_norm: "tanh" (every component in (-1, 1)) or "l2" (every slot of norm sqrt(d)).
        latent_queries: learned queries read the paragraph (True) or the first k paragraph states are the slots.
        latent_kl: the encoder also predicts log-variances (a VAE; the objective's kl_weight scales the KL).
        denoiser_layers / denoiser_hidden_size / denoiser_heads: the planner (0 layers: an autoencoder only).
        beta_schedule / prediction_type: the VP schedule (`vp_alphas_cumprod`, 1000 steps) and what the denoiser
            predicts ("sample" = x0, "epsilon", "v_prediction"), shared by training and the DDIM sampler.
        ar_decoder: the decoder's `TextDiffConfig` as a dict (causal; prefix_dim = latent_dim); not named `decoder`,
            which HF reads as a nested text config.
    """

    model_type = "textdiff_planner"

    def __init__(self, vocab_size: int = 4096, hidden_size: int = 256, encoder_layers: int = 2,
                 num_attention_heads: int = 4, num_key_value_heads: int | None = None,
                 intermediate_size: int | None = None, max_position_embeddings: int = 160, num_latents: int = 16,
                 latent_dim: int = 64, latent_norm: str = "tanh", latent_queries: bool = True, latent_kl: bool = False,
                 denoiser_layers: int = 0, denoiser_hidden_size: int = 256, denoiser_heads: int = 4,
                 beta_schedule: str = "cosine", prediction_type: str = "sample", ar_decoder: dict | None = None,
                 initializer_range: float = 0.02, rms_norm_eps: float = 1e-6, **kwargs):
        if num_latents < 1:
            raise ValueError(f"num_latents (k) must be >= 1, got {num_latents}")
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        if latent_norm not in LATENT_NORMS:
            raise ValueError(f"latent_norm must be one of {', '.join(LATENT_NORMS)}, got {latent_norm!r}")
        if prediction_type not in ("sample", "epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be sample | epsilon | v_prediction, got {prediction_type!r}")
        self.vocab_size, self.hidden_size, self.encoder_layers = vocab_size, hidden_size, encoder_layers
        self.num_attention_heads, self.num_key_value_heads = num_attention_heads, num_key_value_heads
        self.intermediate_size = intermediate_size or 64 * ((8 * hidden_size // 3 + 63) // 64)
        self.max_position_embeddings = max_position_embeddings
        self.num_latents, self.latent_dim, self.latent_norm = num_latents, latent_dim, latent_norm
        self.latent_queries, self.latent_kl = latent_queries, latent_kl
        self.denoiser_layers, self.denoiser_hidden_size = denoiser_layers, denoiser_hidden_size
        self.denoiser_heads = denoiser_heads
        self.beta_schedule, self.prediction_type = beta_schedule, prediction_type
        self.ar_decoder = dict(ar_decoder) if ar_decoder is not None else None
        self.initializer_range, self.rms_norm_eps = initializer_range, rms_norm_eps
        self.attention_mode = "causal"  # what the decoder runs; the trainer checks it against the objective
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def decoder_config(self) -> TextDiffConfig:
        if self.ar_decoder is None:
            raise ValueError("PlannerConfig.ar_decoder is not set (the decoder's TextDiffConfig as a dict)")
        config = TextDiffConfig(**{k: v for k, v in self.ar_decoder.items() if k not in ("model_type", "architectures",
                                                                                       "transformers_version")})
        if config.attention_mode != "causal" or config.prefix_dim != self.latent_dim:
            raise ValueError(f"the decoder must be causal with prefix_dim = latent_dim ({self.latent_dim}), got "
                             f"{config.attention_mode!r} and prefix_dim={config.prefix_dim}")
        return config


class PlannerModel(PartsPreTrainedModel):
    """Encoder -> k slots -> causal decoder, plus the latent denoiser (module docstring). Parts: `encoder_embed`,
    `encoder` (Trunk), `queries`, `to_mean` (+ `to_logvar`), `decoder` (TextDiffModel); with a denoiser
    `denoiser_in`, `condition_in`, `null_condition`, `denoiser` (Trunk, time-conditioned), `denoiser_out`."""

    config_class = PlannerConfig
    config: PlannerConfig
    base_model_prefix = "planner"

    def __init__(self, config: PlannerConfig, decoder: TextDiffModel | None = None):
        super().__init__(config)
        c = config
        self.encoder_embed = nn.Embedding(c.vocab_size, c.hidden_size)
        self.encoder = Trunk(hidden_size=c.hidden_size, num_layers=c.encoder_layers, num_heads=c.num_attention_heads,
                             num_kv_heads=c.num_key_value_heads, intermediate_size=c.intermediate_size,
                             norm_eps=c.rms_norm_eps, max_position_embeddings=c.max_position_embeddings,
                             attention_mode="bidirectional")
        if c.latent_queries:
            self.queries = nn.Parameter(torch.zeros(c.num_latents, c.hidden_size))
        self.to_mean = nn.Linear(c.hidden_size, c.latent_dim)
        if c.latent_kl:
            self.to_logvar = nn.Linear(c.hidden_size, c.latent_dim)
        self.decoder = decoder if decoder is not None else TextDiffModel(c.decoder_config())
        if c.denoiser_layers > 0:
            H = c.denoiser_hidden_size
            self.denoiser_in = nn.Linear(c.latent_dim, H)
            self.condition_in = nn.Linear(c.latent_dim, H)
            self.null_condition = nn.Parameter(torch.zeros(c.num_latents, H))
            self.denoiser = Trunk(hidden_size=H, num_layers=c.denoiser_layers, num_heads=c.denoiser_heads,
                                  intermediate_size=64 * ((8 * H // 3 + 63) // 64), norm_eps=c.rms_norm_eps,
                                  attention_mode="bidirectional", time_conditioning=True)
            self.denoiser_out = VectorHead(hidden_size=H, out_dim=c.latent_dim, zero_init=True)
        pretrained = {k: v.clone() for k, v in decoder.state_dict().items()} if decoder is not None else None
        self.post_init()
        if pretrained is not None:  # the shared init must not redraw a pretrained decoder
            self.decoder.load_state_dict(pretrained)

    @property
    def has_denoiser(self) -> bool:
        return "denoiser" in self._modules

    # ------------------------------------------------------------------------------------------ encoder
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
               return_logvar: bool = False):
        """Slots [B, k, d] of paragraphs input_ids [B, L] (1 = token in attention_mask): the normalised mean;
        with return_logvar also the log-variances [B, k, d] (None without `latent_kl`)."""
        c = self.config
        B, L = input_ids.shape
        if c.latent_queries:
            if c.num_latents + L > c.max_position_embeddings:
                raise ValueError(f"a text of {L} tokens is longer than the encoder's context: {c.num_latents} slots "
                                 f"+ {L} tokens > max_position_embeddings {c.max_position_embeddings}")
        elif L > c.max_position_embeddings:
            raise ValueError(f"a text of {L} tokens is longer than the encoder's context "
                             f"(max_position_embeddings {c.max_position_embeddings})")
        if not c.latent_queries and L < c.num_latents:
            raise ValueError(f"latent_queries=False takes the first k = {c.num_latents} states: texts need >= k "
                             f"tokens, got {L}")
        x = self.encoder_embed(input_ids)  # [B, L, H]
        mask = attention_mask
        if c.latent_queries:
            x = torch.cat([self.queries[None].expand(B, -1, -1).to(x.dtype), x], dim=1)  # [B, k + L, H]
            if mask is not None:
                mask = torch.cat([mask.new_ones(B, c.num_latents), mask], dim=1)
        h = self.encoder(x, attention_mask=mask).last_hidden_state[:, : c.num_latents]  # [B, k, H]
        mean = self.normalize(self.to_mean(h))  # [B, k, d]
        if not return_logvar:
            return mean
        return mean, (self.to_logvar(h) if c.latent_kl else None)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z) if self.config.latent_norm == "tanh" else l2_scaled(z)

    # ------------------------------------------------------------------------------------------ decoder
    def decode_logits(self, latents: torch.Tensor | None, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits [B, L, V] of the decoder reading the slots [B, k, d] as a prefix (None: no prefix,
        the AR decoder alone); attention_mask [B, L] covers the text (the prefix is always attended)."""
        if latents is not None and attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(latents.shape[:2]), attention_mask], dim=1)
        return self.decoder(input_ids=input_ids, attention_mask=attention_mask, prefix=latents).logits

    # ------------------------------------------------------------------------------------------ denoiser
    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None = None,
                use_condition: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser's prediction [B, k, d] (of `config.prediction_type`) for noisy slots z_t [B, k, d] at times
        t [B] in [0, 1], given condition slots [B, k, d] (the encoded prompt) where use_condition [B] is True and
        the learned null condition elsewhere (None: null everywhere, the unconditional model)."""
        if not self.has_denoiser:
            raise ValueError("this planner checkpoint has no denoiser (an autoencoder: denoiser_layers = 0)")
        B = z_t.shape[0]
        null = self.null_condition[None].expand(B, -1, -1)  # [B, k, H]
        if condition is None:
            prefix = null
        else:
            prefix = self.condition_in(condition.to(z_t.dtype))  # [B, k, H]
            if use_condition is not None:
                prefix = torch.where(use_condition[:, None, None], prefix, null.to(prefix.dtype))
        x = torch.cat([prefix.to(z_t.dtype), self.denoiser_in(z_t)], dim=1)  # [B, 2k, H]
        h = self.denoiser(x, t=t).last_hidden_state[:, prefix.shape[1]:]  # [B, k, H]
        return self.denoiser_out(h)  # [B, k, d]


AutoConfig.register("textdiff_planner", PlannerConfig, exist_ok=True)
AutoModel.register(PlannerConfig, PlannerModel, exist_ok=True)
