"""Coupled-GRPO (DiffuCoder) and d1 (diffu-GRPO) for masked-diffusion LMs, as the smallest `trl.GRPOTrainer` subclass.

TRL does everything that is not diffusion-specific: prompt sampling and repetition, reward functions and weights,
group advantages, clipping, the KL to a reference model (and its sync), loss types, logging. This subclass swaps the
two places where an autoregressive model is assumed (rollouts and per-token log-probs) and keeps the per-iteration
masks consistent. Written against TRL 1.16 (`TRL_VERSIONS`); the overridden private hooks move between releases.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from typing import Any

import torch
from accelerate.utils import is_peft_model
from packaging.version import Version
from transformers import AutoModel, GenerationConfig
from trl import GRPOConfig, GRPOTrainer
from trl.trainer import grpo_trainer as trl_grpo
from trl.trainer.utils import use_adapter

from textdiff.pipelines.text import left_pad
from textdiff.rl.estimators import coupled_estimate, d1_estimate, row_mask_seeds
from textdiff.rl.options import DiffusionRLOptions
from textdiff.samplers.generate import generate
from textdiff.train.checkpoints import AtomicCheckpoints

TRL_VERSIONS = (">=1.16.0", "<1.17.0")
"""The TRL releases whose private GRPOTrainer hooks this subclass was written and tested against."""


def _check_trl_version() -> None:
    installed = Version(package_version("trl"))
    if not Version("1.16.0") <= installed < Version("1.17.0"):
        raise ImportError(
            f"CoupledGRPOTrainer overrides private GRPOTrainer hooks of trl {' '.join(TRL_VERSIONS)}; "
            f"trl {installed} is installed (pip install 'trl>=1.16,<1.17')"
        )


@contextlib.contextmanager
def _reference_from_auto_model():
    """TRL 1.16 rebuilds the beta > 0 reference with `create_model_from_path(config._name_or_path)`, which guesses
    the class from `transformers.<architectures[0]>` or a remote-code `auto_map`; a textdiff checkpoint has
    neither. For the duration of `GRPOTrainer.__init__`, load it through `AutoModel` (which textdiff registers)."""
    original = trl_grpo.create_model_from_path

    def load(model_id, architecture=None, **kwargs):
        return original(model_id, architecture=architecture or AutoModel, **kwargs)

    trl_grpo.create_model_from_path = load
    try:
        yield
    finally:
        trl_grpo.create_model_from_path = original


def _zero_constant_groups(advantages: torch.Tensor, group_size: int) -> torch.Tensor:
    """Exact zeros for groups whose rewards had no variance. TRL's float32 group mean leaves +-7e-9 there (eight
    rewards of 0.1), and Adam turns such noise gradients into lr-sized steps of random sign while its second
    moment is small. Rows of a group are contiguous here (TRL shuffles later); with no variance they are equal."""
    if advantages.dim() != 1 or group_size < 2 or advantages.numel() % group_size:
        return advantages
    groups = advantages.view(-1, group_size)  # [num_groups, G]
    constant = (groups.max(dim=1).values == groups.min(dim=1).values)[:, None]  # [num_groups, 1]
    return torch.where(constant, torch.zeros_like(groups), groups).view(-1)


@dataclass
class CoupledGRPOConfig(GRPOConfig, DiffusionRLOptions):
    """`GRPOConfig` plus the diffusion rollout and log-likelihood estimator options (`DiffusionRLOptions`,
    declared once and shared with the recipe's `rl` section).

    `max_completion_length` is the generation canvas (gen_length) and `temperature` the rollout temperature.
    Log-probs are estimated at temperature 1 (the estimators are not sampling likelihoods either way).
    """

    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute each trunk block in the backward pass (less memory, slower steps); off by default"})
    """TRL turns activation checkpointing on by default; the textdiff trunk does not support it."""
    mask_seed: int = field(default=0, metadata={"help": "base seed of the per-row mask generators."})
    """base seed mixed into every row's mask seed."""
    logit_shift: bool | None = field(default=None, metadata={"help": "None: model.config.logit_shift."})
    """position i is predicted by the logits at i - 1 (AR-adapted models); None reads model.config.logit_shift."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_rl_options(self.max_completion_length)


class CoupledGRPOTrainer(AtomicCheckpoints, GRPOTrainer):
    """GRPO for masked-diffusion LMs: diffusion rollouts (`textdiff.generate`, any rule) and per-token log-probs
    from the coupled (DiffuCoder) or one-step (d1) estimator, on TRL's GRPOTrainer.

    Overridden `GRPOTrainer` methods (TRL 1.16, see `OVERRIDDEN`):
      - `_generate_single_turn`: left-padded prompts -> `textdiff.generate`; returns the canvas, cut after the
        first EOS when pad == EOS (then TRL's right padding rebuilds the canvas exactly).
      - `_get_per_token_logps_and_entropies`: the estimator, on the full rollout canvas (TRL pads completions
        only to the batch's longest; the EOS tail is put back, since a masked model reads the canvas length).
        Masks come from per-row generators seeded by (row content, rollout id, inner iteration), so old,
        reference and current log-probs share masks however TRL shuffles and splits the batch.
      - `_generate_and_score_completions`: starts a new rollout id, sets the advantages of groups without reward
        variance to exact zeros, and with `num_iterations` K > 1 and fresh masks per iteration stores old /
        reference log-probs for every iteration batch-first as [B, K, C].
      - `_compute_loss`: picks the inner iteration k = (step // steps_per_generation) % K, sets its masks and
        old / reference slices, then runs TRL's loss unchanged (every loss type, beta = 0 or > 0).
    During `__init__` only, TRL's module-level `create_model_from_path` loads the reference through `AutoModel`
    (see `_reference_from_auto_model`). Checkpoints are staged, sealed and published atomically, and resumes are
    checked, by `AtomicCheckpoints` (shared with DiffusionTrainer); a checkpoint also keeps the rollout sampler's
    state (`extra_checkpoint_state`), so a resumed run draws the rollouts and masks the uninterrupted one would.
    """

    OVERRIDDEN = (
        "_generate_single_turn",
        "_get_per_token_logps_and_entropies",
        "_generate_and_score_completions",
        "_compute_loss",
    )

    def __init__(self, model, reward_funcs, args: CoupledGRPOConfig | None = None, **kwargs: Any) -> None:
        _check_trl_version()
        if args is None:
            args = CoupledGRPOConfig(output_dir="runs/coupled_grpo")
        if not isinstance(args, CoupledGRPOConfig):
            raise TypeError(f"args must be a CoupledGRPOConfig, got {type(args).__name__}")
        if isinstance(model, str):
            model = AutoModel.from_pretrained(model)  # keeps config._name_or_path: TRL reloads the reference from it
        if getattr(model.config, "mask_token_id", None) is None:
            raise ValueError("the policy is not a masked-diffusion model: model.config.mask_token_id is None")
        if getattr(model.config, "attention_mode", "bidirectional") == "causal":
            raise ValueError("the policy is in causal (AR) attention mode; coupled-GRPO needs a masked-diffusion model")
        if getattr(model.config, "attention_mode", "bidirectional") == "block_causal":
            raise ValueError("the policy is block-causal (bd3): coupled-GRPO's log-probs score a bidirectional masked "
                             "model, not block diffusion's [x_t ; x_0] pass (not supported yet)")
        if args.beta != 0.0 and not is_peft_model(model) and not getattr(model.config, "_name_or_path", ""):
            raise ValueError(
                "beta > 0 needs a reference model, which TRL reloads from model.config._name_or_path: save the policy "
                "with save_pretrained(dir) and pass the directory (or a model loaded from it)"
            )
        if getattr(model, "generation_config", None) is None:
            # TRL writes pad/eos into it; a masked LM that is not a GenerationMixin has none
            model.generation_config = GenerationConfig(
                eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id
            )
        with _reference_from_auto_model():
            super().__init__(model, reward_funcs, args=args, **kwargs)
        shift = args.logit_shift
        self.logit_shift = bool(getattr(self.model.config, "logit_shift", False) if shift is None else shift)
        self.mask_token_id = int(self.model.config.mask_token_id)
        self._rollout_id = 0
        self._mask_iteration = 0
        self._rollout_generator: torch.Generator | None = None

    # ------------------------------------------------------------------------------------------ checkpoints

    def extra_checkpoint_state(self) -> dict:
        generator = self._rollout_generator
        return {"rollout_id": self._rollout_id, "rollout_generator": None if generator is None else generator.get_state()}

    def load_extra_checkpoint_state(self, state: dict) -> None:
        self._rollout_id = int(state["rollout_id"])
        if state["rollout_generator"] is not None:
            self._rollout_generator = torch.Generator(device=self.accelerator.device)
            self._rollout_generator.set_state(state["rollout_generator"])

    # ------------------------------------------------------------------------------------------ rollouts

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if images is not None or multimodal_fields:
            raise ValueError("CoupledGRPOTrainer generates text only; got images or multimodal fields")
        device = self.accelerator.device
        pad_id = self._tokenizer.pad_token_id
        eos_id = self._tokenizer.eos_token_id
        input_ids, attention_mask = left_pad(prompt_ids, pad_id, device)  # [B, P], as TRL pads prompts for scoring
        width = input_ids.shape[1]
        if self._rollout_generator is None or self._rollout_generator.device != torch.device(device):
            self._rollout_generator = torch.Generator(device=device)
            self._rollout_generator.manual_seed(self.args.seed)
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        gen_length = self.max_completion_length
        out = generate(
            model,
            input_ids,
            attention_mask=attention_mask,
            gen_length=gen_length,
            steps=self.args.diffusion_steps,
            block_length=self.args.block_length or gen_length,
            sampler=self.args.sampler,
            temperature=self.temperature,
            logit_shift=self.logit_shift,
            generator=self._rollout_generator,
            **self.args.sampler_options,
        )
        model.train(was_training)
        completions = []
        for row in out.sequences[:, width:].tolist():
            if pad_id == eos_id and eos_id in row:
                row = row[: row.index(eos_id) + 1]  # the rest is EOS = pad: TRL's padding restores it exactly
            completions.append(row)
        return completions, None

    # ------------------------------------------------------------------------------------------ log-probs

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
        compute_aux_loss=False, **multimodal_inputs,
    ):
        if any(v is not None for v in multimodal_inputs.values()):
            raise ValueError("CoupledGRPOTrainer scores text only; got multimodal inputs")
        C = logits_to_keep
        P = input_ids.shape[1] - C
        # seeds see the real tokens only (prompt padding and completion padding excluded)
        iteration = self._mask_iteration if self.args.random_masking else 0
        seeds = row_mask_seeds(input_ids, attention_mask, rollout_id=self._rollout_id, iteration=iteration,
                               base_seed=self.args.mask_seed)
        # Score on the rollout canvas. TRL pads completions only to the longest in the batch, but a masked model
        # reads the canvas length: the log-probs must be those of the G-token canvas the rollout was decoded on
        # (post-EOS positions are EOS, as generated), or the update trains the policy on other canvas lengths.
        G = max(C, self.max_completion_length)
        if G > C:
            tail = torch.full((input_ids.shape[0], G - C), self._tokenizer.pad_token_id, dtype=input_ids.dtype,
                              device=input_ids.device)
            input_ids = torch.cat([input_ids, tail], dim=1)
            attention_mask = torch.cat([attention_mask, torch.ones_like(tail, dtype=attention_mask.dtype)], dim=1)
        # the model sees the whole canvas (post-EOS positions are context, as during generation)
        attention = attention_mask.clone()
        attention[:, P:] = 1
        batch_size = batch_size or input_ids.shape[0]
        logps, entropies = [], []
        for start in range(0, input_ids.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            with self.accelerator.autocast():
                if self.args.estimator == "coupled":
                    est = coupled_estimate(
                        model, input_ids[rows], attention[rows], G, mask_token_id=self.mask_token_id,
                        seeds=seeds[rows], t_min=self.args.t_min, t_max=self.args.t_max,
                        all_masked_view=self.args.all_masked_view, logit_shift=self.logit_shift,
                    )
                else:
                    est = d1_estimate(
                        model, input_ids[rows], attention[rows], G, mask_token_id=self.mask_token_id,
                        seeds=seeds[rows], p_mask_prompt=self.args.p_mask_prompt, logit_shift=self.logit_shift,
                    )
            logps.append(est.logps[:, :C].float())  # the tokens TRL scores; the EOS tail was context
            entropies.append(est.entropies[:, :C].float())
        # TRL logs the entropy unconditionally, so it is always returned; there is no MoE aux loss
        return torch.cat(logps), torch.cat(entropies), None

    # ------------------------------------------------------------------------------------------ iterations

    def _generate_and_score_completions(self, inputs):
        self._rollout_id += 1
        self._mask_iteration = 0
        output = super()._generate_and_score_completions(inputs)
        output["advantages"] = _zero_constant_groups(output["advantages"], self.num_generations
                                                     if self.model.training else self.num_generations_eval)
        K = self.num_iterations
        if not self.model.training or K == 1 or not self.args.random_masking:
            return output
        # fresh masks per inner iteration: old / ref log-probs of every iteration, batch-first [B, K, C] so that
        # TRL's shuffle and split slice them with the rows they belong to
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        C = output["completion_ids"].shape[1]
        batch_size = self.args.per_device_train_batch_size
        olds, refs = [], []
        with torch.no_grad():
            for k in range(K):
                self._mask_iteration = k
                if k == 0 and "old_per_token_logps" in output:
                    olds.append(output["old_per_token_logps"])
                else:
                    olds.append(self._get_per_token_logps_and_entropies(self.model, ids, attention, C, batch_size)[0])
                if self.beta != 0.0:
                    if k == 0:
                        refs.append(output["ref_per_token_logps"])
                    else:
                        refs.append(self._reference_logps(ids, attention, C, batch_size))
        self._mask_iteration = 0
        output["old_logps_all"] = torch.stack(olds, dim=1)  # [B, K, C]
        if refs:
            output["ref_logps_all"] = torch.stack(refs, dim=1)  # [B, K, C]
        return output

    def _reference_logps(self, ids, attention, C, batch_size):
        if self.ref_model is not None:
            return self._get_per_token_logps_and_entropies(self.ref_model, ids, attention, C, batch_size)[0]
        model = self.accelerator.unwrap_model(self.model)  # PEFT: the reference is the adapter disabled
        with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
            return self._get_per_token_logps_and_entropies(self.model, ids, attention, C, batch_size)[0]

    def _compute_loss(self, model, inputs):
        k = 0
        if self.model.training:
            k = (self._step // self.args.steps_per_generation) % self.num_iterations  # _step: 0-based micro-step
        self._mask_iteration = k
        if "old_logps_all" in inputs:
            inputs = dict(inputs)
            inputs["old_per_token_logps"] = inputs["old_logps_all"][:, k]
            if "ref_logps_all" in inputs:
                inputs["ref_per_token_logps"] = inputs["ref_logps_all"][:, k]
        return super()._compute_loss(model, inputs)
