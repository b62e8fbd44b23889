"""The planner family's options and its three objectives.

- `AutoencoderObjective` (stage autoencoder): reconstruction CE of the decoder reading the encoder's slots, plus
  kl_weight * KL(q(z | x) || N(0, I)) with a VAE encoder (PLANNER: 1e-5); optional token noise on the encoder input
  (a fraction of tokens replaced by random ones) for a smoother latent space.
- `PlannerObjective` (stage planner): the frozen encoder gives x0 = slots of the paragraph and the condition slots
  of its prompt; x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps on the VP schedule the DDIM sampler uses (t uniform
  over its 1000 training steps); the denoiser predicts `prediction_type`; the loss is the squared error in
  `loss_on` (eps, x0 or v, converted by `samplers.parameterization`) times the P2 weight 1 / (p2_k + SNR)^p2_gamma
  (PLANNER: predict x0, loss on eps, k = gamma = 1); the condition is dropped (-> learned null) with probability
  cond_dropout for CFG.
- `DecoderOnlyObjective` (stage ar): the same decoder without slots, the AR twin at equal size and data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from textdiff.objectives.base import Objective, ObjectiveOutput
from textdiff.samplers.parameterization import from_x0_eps, to_x0_eps
from textdiff.schedules import vp_alphas_cumprod

__all__ = ["STAGES", "AutoencoderObjective", "DecoderOnlyObjective", "PlannerObjective", "PlannerOptions",
           "p2_weight", "token_noise"]

STAGES = ("autoencoder", "planner", "ar")
TARGETS = ("sample", "epsilon", "v_prediction")
NUM_TRAIN_TIMESTEPS = 1000


@dataclass
class PlannerOptions:
    """The `objective` section of a `family: planner` recipe."""

    stage: str = "autoencoder"
    """what this run trains: "autoencoder" (encoder + decoder), "planner" (the latent denoiser over a frozen
    autoencoder, model.init_from), or "ar" (the decoder alone, no slots: the AR baseline at equal size)."""
    num_latents: int = 16
    """k, latent slots per paragraph (PLANNER: 16)."""
    latent_dim: int = 64
    """d, the width of a slot."""
    latent_norm: str = "tanh"
    """"tanh" (bounded in (-1, 1): Imagen dynamic thresholding of x0 when sampling) or "l2" (norm sqrt(d))."""
    latent_queries: bool = True
    """k learned queries read the paragraph; false = the first k encoder states are the slots (PLANNER)."""
    encoder_layers: int = 2
    """blocks of the bidirectional encoder trunk (width model.hidden_size)."""
    kl_weight: float = 0.0
    """> 0: a VAE encoder (log-variances, tanh on the mean) with this KL weight (PLANNER: 1e-5)."""
    token_noise: float = 0.0
    """fraction of encoder input tokens replaced by random tokens during autoencoder training."""
    max_tokens: int = 64
    """paragraph tokens kept (longer paragraphs are truncated)."""
    min_words: int = 8
    """shortest paragraph kept, in words."""
    prompt_tokens: int = 8
    """the prompt (planner condition) is the paragraph's first prompt_tokens tokens."""
    decoder: str = "trunk"
    """"trunk": a fresh causal trunk of the model.* size; "smollm2": SmolLM2-135M converted offline (its
    tokenizer); or a textdiff causal checkpoint directory."""
    freeze_decoder: bool = False
    """keep a pretrained decoder's weights fixed (only the slots -> embedding adapter and the encoder train)."""
    adapter_width: int | None = None
    """the width the slots -> embedding adapter maps to (default: the decoder's hidden size); a decoder of another
    width is an error."""
    denoiser_layers: int = 4
    """planner: blocks of the time-conditioned denoiser trunk."""
    denoiser_hidden_size: int = 256
    """planner: width of the denoiser."""
    denoiser_heads: int = 4
    """planner: attention heads of the denoiser."""
    beta_schedule: str = "cosine"
    """planner: VP schedule of training and DDIM sampling (linear | scaled_linear | cosine)."""
    prediction_type: str = "sample"
    """planner: what the denoiser predicts: sample (x0, PLANNER), epsilon, v_prediction."""
    loss_on: str = "epsilon"
    """planner: the space of the squared error: epsilon (PLANNER), sample (x0) or v_prediction."""
    p2_gamma: float = 1.0
    """planner: P2 weight exponent (0 = unweighted)."""
    p2_k: float = 1.0
    """planner: P2 weight offset k in 1 / (k + SNR)^gamma."""
    cond_dropout: float = 0.1
    """planner: probability that a row's condition is replaced by the learned null condition (CFG)."""

    def __post_init__(self):
        checks = [
            (self.stage in STAGES, "stage", f"one of {', '.join(STAGES)}"),
            (self.num_latents >= 1, "num_latents", ">= 1 (k = 0 slots cannot carry a plan)"),
            (self.latent_dim >= 1, "latent_dim", ">= 1"),
            (self.latent_norm in ("tanh", "l2"), "latent_norm", "tanh or l2"),
            (self.encoder_layers >= 1, "encoder_layers", ">= 1"),
            (self.kl_weight >= 0, "kl_weight", ">= 0"),
            (0 <= self.token_noise < 1, "token_noise", "in [0, 1)"),
            (self.max_tokens >= 2, "max_tokens", ">= 2"),
            (self.prompt_tokens >= 1, "prompt_tokens", ">= 1"),
            (self.denoiser_layers >= 1, "denoiser_layers", ">= 1"),
            (self.beta_schedule in ("linear", "scaled_linear", "cosine"), "beta_schedule", "linear | scaled_linear | cosine"),
            (self.prediction_type in TARGETS, "prediction_type", " | ".join(TARGETS)),
            (self.loss_on in TARGETS, "loss_on", " | ".join(TARGETS)),
            (0 <= self.cond_dropout <= 1, "cond_dropout", "in [0, 1]"),
            (self.p2_gamma >= 0 and self.p2_k >= 0, "p2_gamma", ">= 0 (and p2_k >= 0)"),
            (self.adapter_width is None or self.adapter_width >= 1, "adapter_width", ">= 1 (or null)"),
        ]
        for ok, name, need in checks:
            if not ok:
                raise ValueError(f"objective.{name} must be {need}, got {getattr(self, name)!r}")


def token_noise(input_ids: Tensor, attention_mask: Tensor, fraction: float, vocab_size: int,
                generator: torch.Generator | None = None) -> Tensor:
    """input_ids with each real token replaced, with probability `fraction`, by a uniformly random token."""
    if fraction <= 0:
        return input_ids
    hit = (torch.rand(input_ids.shape, generator=generator, device=input_ids.device) < fraction) & attention_mask.bool()
    random = torch.randint(0, vocab_size, input_ids.shape, generator=generator, device=input_ids.device)
    return torch.where(hit, random, input_ids)


def p2_weight(alphas_cumprod: Tensor, k: float = 1.0, gamma: float = 1.0) -> Tensor:
    """P2 weight 1 / (k + SNR)^gamma with SNR = abar / (1 - abar) (Choi et al. 2022; PLANNER k = gamma = 1)."""
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return (k + snr) ** -gamma


def _sum_ce(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(summed CE over labels != -100, their count)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    return ce, (labels != -100).sum()


class AutoencoderObjective(Objective):
    """Reconstruction CE (+ kl_weight * KL); validation: the exact reconstruction NLL per token."""

    attention_mode = "causal"

    def __init__(self, kl_weight: float = 0.0, token_noise: float = 0.0):
        self.kl_weight, self.token_noise = kl_weight, token_noise

    def __call__(self, model, batch: dict[str, Any]) -> ObjectiveOutput:
        enc_ids = token_noise(batch["input_ids"], batch["attention_mask"], self.token_noise, model.config.vocab_size)
        mean, logvar = model.encode(enc_ids, batch["attention_mask"], return_logvar=True)  # [B, k, d] each
        z, kl = mean, mean.new_zeros(())
        if logvar is not None:
            z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum((1, 2)).mean()
        logits = model.decode_logits(z, batch["decoder_input_ids"])  # [B, L + 1, V]
        ce, n = _sum_ce(logits, batch["labels"])
        loss = ce / n.clamp(min=1) + self.kl_weight * kl
        return ObjectiveOutput(loss=loss, logs={"ce": float(ce.detach() / n.clamp(min=1)), "kl": float(kl.detach())})

    @torch.no_grad()
    def nll(self, model, batch, *, generator=None, num_samples: int = 1) -> tuple[Tensor, Tensor]:
        z = model.encode(batch["input_ids"], batch["attention_mask"])
        return _sum_ce(model.decode_logits(z, batch["decoder_input_ids"]), batch["labels"])

    def check_attention_mode(self, model_attention_mode: str) -> None:
        if model_attention_mode != "causal":
            raise ValueError(f"the planner's decoder must be causal, got attention_mode={model_attention_mode!r}")


class DecoderOnlyObjective(AutoencoderObjective):
    """The decoder alone (no slots): next-token CE, exact NLL."""

    def __call__(self, model, batch: dict[str, Any]) -> ObjectiveOutput:
        ce, n = _sum_ce(model.decode_logits(None, batch["decoder_input_ids"]), batch["labels"])
        return ObjectiveOutput(loss=ce / n.clamp(min=1))

    @torch.no_grad()
    def nll(self, model, batch, *, generator=None, num_samples: int = 1) -> tuple[Tensor, Tensor]:
        return _sum_ce(model.decode_logits(None, batch["decoder_input_ids"]), batch["labels"])


class PlannerObjective(Objective):
    """Latent diffusion over the frozen encoder's slots (module docstring); validation: the same weighted loss
    per sample, Monte Carlo over t with the evaluation seed (metric "mse")."""

    attention_mode = "causal"
    metric = "mse"

    def __init__(self, *, beta_schedule: str = "cosine", prediction_type: str = "sample", loss_on: str = "epsilon",
                 p2_gamma: float = 1.0, p2_k: float = 1.0, cond_dropout: float = 0.1):
        self.alphas_cumprod = vp_alphas_cumprod(beta_schedule, NUM_TRAIN_TIMESTEPS)
        self.weights = p2_weight(self.alphas_cumprod, p2_k, p2_gamma)
        self.prediction_type, self.loss_on, self.cond_dropout = prediction_type, loss_on, cond_dropout

    @torch.no_grad()
    def targets(self, model, batch) -> tuple[Tensor, Tensor]:
        """(x0 [B, k, d] slots of the paragraphs, condition [B, k, d] slots of their prompts), encoder frozen."""
        return (model.encode(batch["input_ids"], batch["attention_mask"]),
                model.encode(batch["prompt_ids"], batch["prompt_mask"]))

    def losses(self, model, x0: Tensor, condition: Tensor, timesteps: Tensor, noise: Tensor,
               use_condition: Tensor) -> Tensor:
        """Weighted squared error per sample [B] at integer timesteps [B] with the given noise."""
        abar = self.alphas_cumprod.to(x0.device)[timesteps][:, None, None]
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        x_t = alpha * x0 + sigma * noise  # [B, k, d]
        pred = model.denoise(x_t, timesteps.float() / NUM_TRAIN_TIMESTEPS, condition, use_condition)
        x0_hat, eps_hat = to_x0_eps(pred, x_t, alpha, sigma, self.prediction_type)
        target = from_x0_eps(x0, noise, alpha, sigma, self.loss_on)
        estimate = from_x0_eps(x0_hat, eps_hat, alpha, sigma, self.loss_on)
        w = self.weights.to(x0.device)[timesteps]
        return w * (estimate.float() - target.float()).pow(2).mean((1, 2))

    def __call__(self, model, batch: dict[str, Any]) -> ObjectiveOutput:
        x0, condition = self.targets(model, batch)
        B = x0.shape[0]
        timesteps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (B,), device=x0.device)
        use_condition = torch.rand(B, device=x0.device) >= self.cond_dropout
        loss = self.losses(model, x0, condition, timesteps, torch.randn_like(x0), use_condition).mean()
        return ObjectiveOutput(loss=loss, logs={"cond_fraction": float(use_condition.float().mean())})

    @torch.no_grad()
    def nll(self, model, batch, *, generator=None, num_samples: int = 1) -> tuple[Tensor, Tensor]:
        x0, condition = self.targets(model, batch)
        B, total = x0.shape[0], x0.new_zeros(())
        for _ in range(num_samples):
            timesteps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (B,), generator=generator).to(x0.device)
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            total = total + self.losses(model, x0, condition, timesteps, noise, torch.ones(B, dtype=torch.bool,
                                                                                         device=x0.device)).sum()
        return total / num_samples, torch.tensor(B)

    def check_attention_mode(self, model_attention_mode: str) -> None:
        AutoencoderObjective.check_attention_mode(self, model_attention_mode)
