"""`DiffusionTrainer`: `transformers.Trainer` driven by any textdiff objective.

The objective owns noising and loss (`objective(model, batch)`) and the evaluation NLL (`objective.nll`), so
the same trainer trains masked, AR and later families; accelerate / DeepSpeed / tensorboard come from Trainer.
Overrides: `compute_loss` (objective + NaN guard), `evaluate` (NLL bound as bits/token and PPL); atomic
checkpoints and checked resumes come from `AtomicCheckpoints` (textdiff.train.checkpoints, shared with RL).
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer

from textdiff.objectives import Objective
from textdiff.train.checkpoints import AtomicCheckpoints


class DiffusionTrainer(AtomicCheckpoints, Trainer):
    def __init__(self, *args, objective: Objective, elbo_samples: int = 4, eval_seed: int = 1234, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.elbo_samples = elbo_samples
        self.eval_seed = eval_seed
        objective.check_attention_mode(self.model.config.attention_mode)

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
        """Validation metric of the objective, named for what it is. `objective.metric == "nll"`: for masked
        diffusion the ELBO upper bound, Monte Carlo over t with a fixed seed and `elbo_samples` draws per sequence;
        for AR the exact NLL; reported per token in nats (`loss`), bits (`bits_per_token`) and as perplexity
        (`ppl`, an upper bound for diffusion). `"mse"` (flow / continuous regression): the mean loss per sample
        as `mse` (and `loss`), never as bits or perplexity."""
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
        if self.objective.metric == "mse":
            mse = total_nll / total_tokens
            metrics = {f"{metric_key_prefix}_loss": mse, f"{metric_key_prefix}_mse": mse,
                       f"{metric_key_prefix}_samples": total_tokens, f"{metric_key_prefix}_mc_samples": self.elbo_samples}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics
        nats = total_nll / total_tokens
        metrics = {
            f"{metric_key_prefix}_loss": nats,
            f"{metric_key_prefix}_bits_per_token": nats / math.log(2),
            f"{metric_key_prefix}_ppl": math.exp(nats) if nats < 700 else math.inf,  # a loose bound overflows exp
            f"{metric_key_prefix}_tokens": total_tokens,
            f"{metric_key_prefix}_mc_samples": self.elbo_samples if self.objective.attention_mode != "causal" else 0,
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
