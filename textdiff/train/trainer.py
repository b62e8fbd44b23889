"""`DiffusionTrainer`: `transformers.Trainer` driven by any textdiff objective.

The objective owns noising and loss (`objective(model, batch)`) and the evaluation NLL (`objective.nll`), so
the same trainer trains masked, AR and later families; accelerate / DeepSpeed / tensorboard come from Trainer.
Overrides: `compute_loss` (objective + NaN guard), `evaluate` (NLL bound as bits/token and PPL),
`_get_output_dir` / `_save_checkpoint` (atomic checkpoints: write to a staging dir, then rename).
"""

from __future__ import annotations

import math
import os
import shutil

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer
from transformers.trainer import rotate_checkpoints
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from textdiff.objectives import Objective

STAGING_DIR = ".staging"


class DiffusionTrainer(Trainer):
    def __init__(self, *args, objective: Objective, elbo_samples: int = 4, eval_seed: int = 1234, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.elbo_samples = elbo_samples
        self.eval_seed = eval_seed
        self._staging = False
        mode = self.model.config.attention_mode
        if mode != objective.attention_mode:
            raise ValueError(
                f"objective {type(objective).__name__} trains attention_mode={objective.attention_mode!r} "
                f"but the model has attention_mode={mode!r}"
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # step-dependent objectives (attention-mask annealing) see the optimizer step they are training
        step = {"step": self.state.global_step} if getattr(self.objective, "step_dependent", False) else {}
        out = self.objective(model, inputs, **step)
        if not torch.isfinite(out.loss):
            raise FloatingPointError(
                f"non-finite training loss ({out.loss.item()}) at step {self.state.global_step}: "
                "lower trainer.learning_rate, enable clipping (trainer.max_grad_norm) or resume from the last checkpoint"
            )
        if self.model.training and self.state.global_step % max(self.args.logging_steps, 1) == 0:
            self._objective_logs = out.logs
        return (out.loss, out) if return_outputs else out.loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        extra = getattr(self, "_objective_logs", None)
        if extra and "loss" in logs:
            logs = {**logs, **{f"train_{k}": v for k, v in extra.items()}}
        super().log(logs, *args, **kwargs)

    @torch.no_grad()
    def evaluate(self, eval_dataset: Dataset | None = None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """Validation NLL of the objective: for masked diffusion the ELBO upper bound, Monte Carlo over t with a
        fixed seed and `elbo_samples` draws per sequence; for AR the exact NLL. Reported per token in nats
        (`loss`), bits (`bits_per_token`) and as perplexity (`ppl`, an upper bound for diffusion)."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        loader: DataLoader = self.get_eval_dataloader(dataset)
        model = self.model
        was_training = model.training
        model.eval()
        generator = torch.Generator(device="cpu").manual_seed(self.eval_seed)
        total_nll, total_tokens = 0.0, 0
        for batch in loader:
            batch = self._prepare_inputs(batch)
            nll, n_tokens = self.objective.nll(model, batch, generator=generator, num_samples=self.elbo_samples)
            total_nll += float(nll)
            total_tokens += int(n_tokens)
        model.train(was_training)
        if total_tokens == 0:
            raise ValueError("the validation split produced no scored tokens")
        nats = total_nll / total_tokens
        metrics = {
            f"{metric_key_prefix}_loss": nats,
            f"{metric_key_prefix}_bits_per_token": nats / math.log(2),
            f"{metric_key_prefix}_ppl": math.exp(nats),
            f"{metric_key_prefix}_tokens": total_tokens,
            f"{metric_key_prefix}_mc_samples": self.elbo_samples if self.objective.attention_mode != "causal" else 0,
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # Atomic checkpoints: Trainer writes everything into <output_dir>/.staging/checkpoint-N, then one rename
    # publishes it, so a crash mid-save never leaves a half-written checkpoint-N for resume to pick up.
    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if self._staging else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, final = os.path.join(run_dir, STAGING_DIR, name), os.path.join(run_dir, name)
        if self.args.should_save and os.path.exists(staged):
            shutil.rmtree(staged)
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        if self.args.should_save:
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(staged, final)
            os.rmdir(os.path.dirname(staged))  # empty again: leave no trace of the staging area
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
