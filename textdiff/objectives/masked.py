"""Masked (absorbing-state) diffusion: MDLM / LLaDA training loss and ELBO likelihood.

Forward process: each maskable token is replaced by [MASK] independently with probability
1 - alpha(t). Loss: sum over masked positions of CE(logits, x0) * w(t), w(t) = -alpha'(t) / (1 - alpha(t))
(1/t for the linear schedule), normalised per token (pretraining) or per answer length (SFT).

The model's prediction of x0 is MDLM's SUBS parameterisation: the softmax runs over the vocabulary without
[MASK] (its log-prob is -inf), since a clean token is never [MASK] and the samplers never commit it. Only masked
positions are scored, so SUBS's other half (carry-over of unmasked tokens) contributes nothing to the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from textdiff.objectives.anneal import anneal_ratio, annealed_attention_mask
from textdiff.objectives.base import Objective, ObjectiveOutput
from textdiff.schedules import MaskingSchedule, get_masking_schedule, sample_timesteps, uniform_noise

__all__ = [
    "MaskedDiffusionObjective", "MaskedDiffusionOptions", "apply_mask", "masked_diffusion_loss", "subs_log_probs",
]

NORMALIZATIONS = ("token", "answer")
ANTITHETIC_SAMPLERS = ("low_discrepancy", "stratified")


def subs_log_probs(logits: Tensor, mask_token_id: int) -> Tensor:
    """MDLM's SUBS log-probabilities of x0: log-softmax over the vocabulary without [MASK] (whose log-prob is -inf).

    logits [..., V] of any dtype; returns float32 [..., V].
    """
    logits = logits.float().index_fill(-1, _mask_index(mask_token_id, logits), -torch.inf)  # [..., V]
    return torch.log_softmax(logits, dim=-1)


def _mask_index(mask_token_id: int, logits: Tensor) -> Tensor:
    if not 0 <= mask_token_id < logits.shape[-1]:
        raise ValueError(f"mask_token_id {mask_token_id} is outside the {logits.shape[-1]} logits")
    return torch.tensor([mask_token_id], device=logits.device)


def masked_diffusion_loss(
    logits: Tensor,
    targets: Tensor,
    masked: Tensor,
    weights: Tensor,
    normalizer: Tensor | float,
    *,
    mask_token_id: int,
) -> Tensor:
    """sum_{(b, i) masked} CE_SUBS(logits[b, i], targets[b, i]) * weight[b(, i)] / normalizer.

    logits [B, L, V]; targets [B, L] long; masked [B, L] bool; weights [B] (per sequence) or
    [B, L] (per token). CE_SUBS is the cross-entropy of the softmax without the [MASK] column (MDLM's
    SUBS), computed in float32 whatever the logits dtype; a [MASK] target is an error (its loss is infinite).
    """
    if logits.shape[:2] != targets.shape or targets.shape != masked.shape:
        raise ValueError(
            f"shape mismatch: logits {tuple(logits.shape)}, targets {tuple(targets.shape)}, "
            f"masked {tuple(masked.shape)}"
        )
    if weights.dim() == 1:
        weights = weights[:, None].expand(masked.shape)  # [B, L]
    if weights.shape != masked.shape:
        raise ValueError(f"weights must be [B] or [B, L], got {tuple(weights.shape)}")
    scored_targets = targets[masked]  # [N]
    if bool((scored_targets == mask_token_id).any()):
        raise ValueError(f"a scored target is the [MASK] id {mask_token_id}: clean data must not contain [MASK]")
    scored = logits[masked].float()  # [N, V] (a fresh tensor: indexing copies)
    scored.index_fill_(-1, _mask_index(mask_token_id, scored), -torch.inf)  # SUBS: [MASK] is never x0
    token_ce = F.cross_entropy(scored, scored_targets, reduction="none")  # [N]
    return (token_ce * weights[masked].float()).sum() / normalizer


def apply_mask(
    input_ids: Tensor,
    t: Tensor,
    schedule: MaskingSchedule,
    mask_token_id: int,
    *,
    maskable: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Forward process q(x_t | x_0): mask each maskable token independently w.p. 1 - alpha(t).

    input_ids [B, L]; t [B] (one time per sequence) or [B, L] (one per position, e.g. per block in BD3-LM);
    maskable [B, L] bool (False for prompt / padding: never masked). Returns (noisy_ids [B, L], masked [B, L] bool).
    """
    mask_prob = schedule.mask_prob(t)  # [B, L] or [B]
    if mask_prob.dim() == 1:
        mask_prob = mask_prob[:, None]  # [B, 1]
    u = uniform_noise(tuple(input_ids.shape), generator=generator, device=input_ids.device,
                      per_example=True)  # [B, L]
    masked = u < mask_prob  # [B, L]
    if maskable is not None:
        masked = masked & maskable.bool()
    noisy_ids = torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids)  # [B, L]
    return noisy_ids, masked


def _per_position(t: Tensor, slots: tuple[Tensor, int] | None) -> Tensor:
    """Times drawn per (sequence, slot) [B * num_slots] -> [B] (no slots) or per position [B, L]."""
    if slots is None:
        return t
    index, num_slots = slots
    return t.view(-1, num_slots).gather(1, index)  # [B, L]


@dataclass
class MaskedDiffusionOptions:
    """The options of masked diffusion: the `objective` section of a `family: masked` recipe."""

    schedule: str = "linear"
    """Masking schedule name: "linear" | "cosine" | "loglinear" (see textdiff.schedules)."""
    eps: float = 1e-3
    """Timesteps are drawn from [eps, 1), which keeps the weight w(t) finite."""
    antithetic: bool = True
    """Stratify the batch's training timesteps (one t in each 1/B-th of [eps, 1)) to reduce the loss variance."""
    antithetic_sampler: str = "low_discrepancy"
    """The stratified law: "low_discrepancy" (VDM: one uniform shared by the strata) | "stratified" (MDLM: one each)."""
    normalization: str = "token"
    """"token": divide by the batch's maskable-token count (MDLM/dllm pretrain); "answer": per sample by answer length, then batch mean (LLaDA SFT)."""
    random_truncation: float = 0.0
    """Per-batch probability of LLaDA's random-length trick (truncate to a length in [1, L]); pretraining only."""
    logit_shift: bool = False
    """Dream/DiffuLLaMA AR-style shift: the model's logits at i predict token i+1; position 0 is then never masked."""
    anneal_steps: int = 0
    """DiffuLLaMA attention-mask annealing: at training step s the model attends causally plus a random share
    r = s / anneal_steps of the other pairs (fully bidirectional from anneal_steps on); 0 = bidirectional from
    the start. Needs `step=` in each training call; evaluation (`nll`) is always fully bidirectional."""

    def __post_init__(self) -> None:
        get_masking_schedule(self.schedule)  # an unknown name is an error here, at recipe load
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")
        if self.antithetic_sampler not in ANTITHETIC_SAMPLERS:
            raise ValueError(
                f"unknown antithetic_sampler {self.antithetic_sampler!r}; valid: {', '.join(ANTITHETIC_SAMPLERS)}"
            )
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"unknown normalization {self.normalization!r}; valid: {', '.join(NORMALIZATIONS)}"
            )
        if not 0.0 <= self.random_truncation <= 1.0:
            raise ValueError(f"random_truncation is a probability in [0, 1], got {self.random_truncation}")
        if self.random_truncation > 0 and self.normalization == "answer":
            raise ValueError(
                "random_truncation is a pretraining trick; it cannot be used with normalization='answer'"
            )
        if self.anneal_steps < 0:
            raise ValueError(f"anneal_steps must be >= 0, got {self.anneal_steps}")


@dataclass(kw_only=True)
class MaskedDiffusionObjective(MaskedDiffusionOptions, Objective):
    """MDLM / LLaDA masked-diffusion objective on a bidirectional model.

    Batch keys: `input_ids` [B, L]; optional `attention_mask` [B, L] (0 = padding: never masked,
    never scored); optional `prompt_mask` [B, L] bool (SFT prompt: never masked, never scored);
    optional `answer_lengths` [B] (for normalization="answer"; defaults to the number of
    non-prompt, non-padding positions). LLaDA-style SFT that trains the EOS padding must mark
    those pads as attended (attention_mask = 1), since padding is never scored here.
    """

    mask_token_id: int
    """Id of the [MASK] token written into noised positions."""

    attention_mode: ClassVar[str] = "bidirectional"
    _schedule: MaskingSchedule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._schedule = get_masking_schedule(self.schedule)

    @property
    def step_dependent(self) -> bool:
        """True when the loss depends on the training step (annealing): the trainer then passes `step=`."""
        return self.anneal_steps > 0

    # ------------------------------------------------------------------ training loss

    def __call__(
        self,
        model: torch.nn.Module,
        batch: dict[str, Any],
        *,
        generator: torch.Generator | None = None,
        step: int | None = None,
    ) -> ObjectiveOutput:
        """Training loss. `generator` is None in training (global RNG); tests pass one. `step` (the optimizer
        step) sets the attention-mask annealing ratio and is required when anneal_steps > 0."""
        if self.anneal_steps > 0 and step is None:
            raise ValueError("anneal_steps > 0: pass the training step, objective(model, batch, step=global_step)")
        input_ids, attention_mask, prompt_mask = self._unpack(batch)
        answer_lengths = batch.get("answer_lengths")

        # 1. LLaDA random-length truncation (whole batch, to a length in [1, L])
        if (
            self.random_truncation > 0
            and uniform_noise((1,), generator=generator).item() < self.random_truncation
        ):
            length = int(torch.randint(1, input_ids.shape[1] + 1, (1,), generator=generator))
            input_ids = input_ids[:, :length]  # [B, l]
            attention_mask = attention_mask[:, :length] if attention_mask is not None else None
            prompt_mask = prompt_mask[:, :length] if prompt_mask is not None else None

        # 2. sample t (one per sequence, or one per time slot) and noise the maskable tokens
        maskable = self._maskable(input_ids, attention_mask, prompt_mask)  # [B, L]
        slots = self._time_slots(input_ids, prompt_mask)
        num_slots = 1 if slots is None else slots[1]
        t = sample_timesteps(
            input_ids.shape[0] * num_slots,
            eps=self.eps,
            method=self.antithetic_sampler if self.antithetic else "uniform",
            generator=generator,
            device=input_ids.device,
        )  # [B * slots]
        t = _per_position(t, slots)  # [B] or [B, L]
        noisy_ids, masked = apply_mask(
            input_ids, t, self._schedule, self.mask_token_id, maskable=maskable, generator=generator
        )  # [B, L], [B, L]

        # 3. denoise (while annealing: causal attention + a random share `ratio` of the non-causal pairs)
        ratio = anneal_ratio(step, self.anneal_steps) if self.anneal_steps > 0 else 1.0
        model_mask = attention_mask
        if ratio < 1.0:
            model_mask = annealed_attention_mask(
                input_ids.shape[0], input_ids.shape[1], ratio, key_padding_mask=attention_mask,
                generator=generator, device=input_ids.device,
            )  # [B, 1, L, L]
        extras = self._model_extras(model, input_ids, masked, t, generator)
        logits = self._denoise(model, noisy_ids, input_ids, model_mask, prompt_mask, extras)  # [B, L, V]

        # 4. weighted CE, normalised
        weights = self._schedule.elbo_weight(t)  # [B] or [B, L]
        num_maskable = maskable.sum()
        if self.normalization == "token":
            normalizer: Tensor | float = num_maskable.clamp(min=1)
        else:
            if answer_lengths is None:
                answer_lengths = self._default_answer_lengths(input_ids, attention_mask, prompt_mask)
            lengths = answer_lengths.to(weights).clamp(min=1)  # [B]
            weights = weights / (lengths if weights.dim() == 1 else lengths[:, None])  # [B] or [B, L]
            normalizer = float(input_ids.shape[0])
        loss = masked_diffusion_loss(
            logits, input_ids, masked, weights, normalizer, mask_token_id=self.mask_token_id
        )
        extra = self._extra_loss(model, logits, input_ids, masked, t, extras, bound=False)  # [B] nats or None
        if extra is not None:
            if self.normalization == "answer":
                extra = extra / answer_lengths.to(extra).clamp(min=1)
            loss = loss + extra.sum() / normalizer

        noise_levels = t if t.dim() == 1 else t[maskable]  # per-position times: those of the noised positions
        logs = {
            "mask_ratio": (masked.sum() / num_maskable.clamp(min=1)).item(),
            "t_mean": noise_levels.mean().item() if noise_levels.numel() else 0.0,
        }
        if self.anneal_steps > 0:
            logs["attention_anneal_ratio"] = ratio
        return ObjectiveOutput(loss=loss, logs=logs)

    # ------------------------------------------------------------------ likelihood

    @torch.no_grad()
    def nll(
        self,
        model: torch.nn.Module,
        batch: dict[str, Any],
        *,
        generator: torch.Generator | None = None,
        num_samples: int = 1,
    ) -> tuple[Tensor, Tensor]:
        """Monte Carlo continuous-time NELBO (an upper bound on the NLL), summed over the batch.

        For each sequence, u ~ U(0, 1) and t_k = eps + (1 - eps) (u + k) / K for k < K = num_samples
        (stratified: each t_k is marginally U[eps, 1), so the mean over k is unbiased), mask with
        `generator`, and score sum_{i masked} CE * w(t_k). Returns (mean over k of the batch sum,
        number of scored tokens). Prompt and padding are neither noised nor scored, so for SFT
        batches this is the NLL bound of the answer given the prompt.

        Truncation: like MDLM, this estimates E_{t ~ U[eps, 1)}[f(t)], i.e. the integral over
        [eps, 1) scaled by 1 / (1 - eps), which stands in for the missing [0, eps) piece with eps
        times the average integrand (exact when f is constant in t, as for the linear schedule with
        a perfect denoiser on iid tokens). The difference from the true integral is O(eps) relative.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        input_ids, attention_mask, prompt_mask = self._unpack(batch)
        maskable = self._maskable(input_ids, attention_mask, prompt_mask)  # [B, L]
        batch_size = input_ids.shape[0]
        slots = self._time_slots(input_ids, prompt_mask)
        num_slots = 1 if slots is None else slots[1]

        u = uniform_noise((batch_size * num_slots,), generator=generator, device=input_ids.device)  # [B * slots]
        total = torch.zeros((), dtype=torch.float32, device=input_ids.device)
        for k in range(num_samples):
            t = _per_position(self.eps + (1.0 - self.eps) * (u + k) / num_samples, slots)  # [B] or [B, L]
            noisy_ids, masked = apply_mask(
                input_ids, t, self._schedule, self.mask_token_id, maskable=maskable, generator=generator
            )  # [B, L], [B, L]
            extras = self._model_extras(model, input_ids, masked, t, generator)
            logits = self._denoise(model, noisy_ids, input_ids, attention_mask, prompt_mask, extras)  # [B, L, V]
            total += masked_diffusion_loss(
                logits, input_ids, masked, self._schedule.elbo_weight(t), 1.0, mask_token_id=self.mask_token_id
            )
            extra = self._extra_loss(model, logits, input_ids, masked, t, extras, bound=True)
            if extra is not None:
                total += extra.sum()
        return total / num_samples, maskable.sum()

    # ------------------------------------------------------------------ helpers

    def _unpack(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if "input_ids" not in batch:
            raise ValueError(f"batch has no 'input_ids' (keys: {sorted(batch)})")
        input_ids = batch["input_ids"]  # [B, L]
        attention_mask = batch.get("attention_mask")  # [B, L] | None
        prompt_mask = batch.get("prompt_mask")  # [B, L] | None
        for name, tensor in (("attention_mask", attention_mask), ("prompt_mask", prompt_mask)):
            if tensor is not None and tensor.shape != input_ids.shape:
                raise ValueError(
                    f"{name} has shape {tuple(tensor.shape)} but input_ids has {tuple(input_ids.shape)}"
                )
        if self.normalization == "answer" and prompt_mask is None:
            raise ValueError("normalization='answer' (SFT) needs a 'prompt_mask' in the batch")
        return input_ids, attention_mask, prompt_mask

    def _maskable(
        self, input_ids: Tensor, attention_mask: Tensor | None, prompt_mask: Tensor | None
    ) -> Tensor:
        """Positions that may be noised and are scored: not padding, not prompt (and not 0 under shift)."""
        maskable = torch.ones_like(input_ids, dtype=torch.bool)  # [B, L]
        if attention_mask is not None:
            maskable &= attention_mask.bool()
        if prompt_mask is not None:
            maskable &= ~prompt_mask.bool()
        if self.logit_shift:
            maskable[:, 0] = False  # no hidden state precedes position 0 to predict it
        return maskable

    @staticmethod
    def _default_answer_lengths(
        input_ids: Tensor, attention_mask: Tensor | None, prompt_mask: Tensor | None
    ) -> Tensor:
        answer = torch.ones_like(input_ids, dtype=torch.bool)  # [B, L]
        if attention_mask is not None:
            answer &= attention_mask.bool()
        if prompt_mask is not None:
            answer &= ~prompt_mask.bool()
        return answer.sum(dim=1)  # [B]

    def _time_slots(self, input_ids: Tensor, prompt_mask: Tensor | None) -> tuple[Tensor, int] | None:
        """Independent noise levels within a sequence: None (one t per sequence, MDLM / LLaDA), or (slots [B, L]
        long, num_slots): position i is noised at the slot slots[b, i] < num_slots of its sequence's num_slots
        times (BD3-LM: one per block). The num_slots * B times are drawn together (stratified over all of them)."""
        return None

    def _model_extras(self, model: torch.nn.Module, input_ids: Tensor, masked: Tensor, t: Tensor,
                      generator: torch.Generator | None) -> dict[str, Any]:
        """Extra keyword arguments of the denoiser call for clean input_ids [B, L] masked at `masked` [B, L] at
        times t [B] (a hybrid family's latents); none for plain masked diffusion."""
        return {}

    def _extra_loss(self, model: torch.nn.Module, logits: Tensor, input_ids: Tensor, masked: Tensor, t: Tensor,
                    extras: dict[str, Any], *, bound: bool) -> Tensor | None:
        """Per-sequence nats [B] added to the weighted CE (before normalisation), or None: in training
        (bound=False) an auxiliary term, in `nll` (bound=True) what the bound needs beyond the CE."""
        return None

    def _denoise(self, model: torch.nn.Module, noisy_ids: Tensor, input_ids: Tensor, attention_mask: Tensor | None,
                 prompt_mask: Tensor | None, extras: dict[str, Any]) -> Tensor:
        """Logits [B, L, V] of the denoiser for noisy_ids [B, L] (of the clean input_ids); the model reads the noisy
        sequence alone here (BD3-LM also reads the clean one)."""
        return self._logits(model, noisy_ids, attention_mask, extras)

    def _logits(self, model: torch.nn.Module, noisy_ids: Tensor, attention_mask: Tensor | None,
                extras: dict[str, Any] | None = None) -> Tensor:
        """Logits aligned with the tokens they score; attention_mask is [B, L] (padding) or [B, 1, L, L]."""
        logits = model(input_ids=noisy_ids, attention_mask=attention_mask, **(extras or {})).logits  # [B, L, V]
        if self.logit_shift:
            # position i is scored with the logits the model produced at i - 1 (Dream); position 0
            # keeps its own logits only to preserve the shape and is never masked
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # [B, L, V]
        return logits
