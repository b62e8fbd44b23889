"""`DiffusionTrainer`: `transformers.Trainer` driven by any textdiff objective.

The objective owns noising and loss (`objective(model, batch)`) and the evaluation NLL (`objective.nll`), so
the same trainer trains masked, AR and later families; accelerate / DeepSpeed / tensorboard come from Trainer.
Overrides: `compute_loss` (objective + NaN guard, noise drawn per rank of the global batch), `evaluate` (NLL bound
as bits/token and PPL, summed over the ranks); atomic checkpoints and checked resumes come from `AtomicCheckpoints`
(textdiff.train.checkpoints, shared with RL), resumes across world sizes from `CrossWorldResume`
(textdiff.train.distributed), streamed train sets from `StreamingResume` (textdiff.train.streaming).
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import Trainer

from textdiff.objectives import Objective
from textdiff.schedules import batch_shard
from textdiff.train.checkpoints import AtomicCheckpoints
from textdiff.train.distributed import CrossWorldResume, reduce_sums
from textdiff.train.streaming import StreamingResume


class DiffusionTrainer(CrossWorldResume, StreamingResume, AtomicCheckpoints, Trainer):
    def __init__(self, *args, objective: Objective, elbo_samples: int = 4, eval_seed: int = 1234, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.elbo_samples = elbo_samples
        self.eval_seed = eval_seed
        objective.check_attention_mode(self.model.config.attention_mode)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # step-dependent objectives (attention-mask annealing) see the optimizer step they are training
        step = {"step": self.state.global_step} if getattr(self.objective, "step_dependent", False) else {}
        # data parallel: each rank draws its rows of the global batch's noise (ranks never repeat each other's t /
        # masks, and N ranks x batch b noise like 1 rank x batch N*b)
        shard = (self.args.process_index, self.args.world_size) if model.training else (0, 1)
        with batch_shard(*shard):
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
        model = self.model
        was_training = model.training
        model.eval()
        total_nll, total_tokens = 0.0, 0
        if self.args.world_size == 1:
            generator = torch.Generator(device="cpu").manual_seed(self.eval_seed)
            for batch in self.get_eval_dataloader(dataset):
                batch = self._prepare_inputs(batch)
                nll, n_tokens = self.objective.nll(model, batch, generator=generator, num_samples=self.elbo_samples)
                total_nll += float(nll)
                total_tokens += int(n_tokens)
        else:
            total_nll, total_tokens = self._evaluate_shard(model, dataset)
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

    def _evaluate_shard(self, model, dataset: Dataset) -> tuple[float, int]:
        """(summed NLL, scored tokens) over the whole split with several ranks: rank r scores examples r, r + N,
        ... (every example once, none padded in twice as accelerate's even batches would), with its own Monte
        Carlo seed, and the totals are summed over the ranks. Every rank runs the same number of forwards
        (ZeRO-3 gathers parameters collectively): a rank out of examples repeats one batch and drops it."""
        rank, world = self.args.process_index, self.args.world_size
        indices = list(range(rank, len(dataset), world))
        part = dataset.select(indices) if hasattr(dataset, "select") else Subset(dataset, indices)
        loader = DataLoader(part, batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator)
        n_batches = math.ceil(math.ceil(len(dataset) / world) / self.args.per_device_eval_batch_size)
        generator = torch.Generator(device="cpu").manual_seed(self.eval_seed + rank)
        total_nll, total_tokens, batches = 0.0, 0, list(loader)
        for i in range(n_batches):
            batch = self._prepare_inputs(batches[min(i, len(batches) - 1)] if batches else next(iter(
                DataLoader(dataset, batch_size=1, collate_fn=self.data_collator))))
            nll, n_tokens = self.objective.nll(model, batch, generator=generator, num_samples=self.elbo_samples)
            if i < len(batches):
                total_nll += float(nll)
                total_tokens += int(n_tokens)
        total_nll, total_tokens = reduce_sums(total_nll, total_tokens, device=self.args.device)
        return total_nll, int(total_tokens)
