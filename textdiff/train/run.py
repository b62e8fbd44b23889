"""The one run skeleton: recipe -> lock the output directory -> build (the family, or RL's policy and rewards)
-> trainer -> train (resuming if asked) -> evaluate -> atomic save -> results.json.

`train_from_recipe` runs every family (masked, ar, flow, or one registered from outside) through it, and
`textdiff.rl.run` runs RL through it; nothing here names a family.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, set_seed

from textdiff.config import Recipe
from textdiff.families import CONFIG_KEY, get_family
from textdiff.train.checkpoints import atomic_write_text, resolve_resume, save_model_atomically
from textdiff.train.distributed import (
    check_scale_out,
    distributed_training_arguments,
    end_run_process_group,
    fsdp_training_arguments,
    process_group_owned,
    scale_results,
)
from textdiff.train.rundir import claim_output_dir
from textdiff.train.trainer import DiffusionTrainer

DEEPSPEED_PRESETS = ("zero2", "zero3")


def resolve_deepspeed(spec: str | None) -> str | None:
    """'zero2' / 'zero3' -> the packaged JSON; any other value must be an existing DeepSpeed config file."""
    if spec is None:
        return None
    if spec in DEEPSPEED_PRESETS:
        return str(resources.files("textdiff.train") / "deepspeed" / f"{spec}.json")
    if not Path(spec).is_file():
        raise FileNotFoundError(f"trainer.deepspeed={spec!r} is neither one of {DEEPSPEED_PRESETS} nor a file")
    return spec


def _single_process_distributed_env() -> None:
    # DeepSpeed needs a process group even for one process; outside torchrun/deepspeed launchers, make it world 1.
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))


def common_training_arguments(recipe: Recipe, *, deepspeed: bool = False) -> dict:
    """The run / trainer settings every HF trainer of textdiff takes (TrainingArguments, TRL's GRPOConfig);
    `deepspeed`: the trainer runs under DeepSpeed (trainer.deepspeed)."""
    t = recipe.trainer
    return {
        "output_dir": recipe.run.output_dir,
        "seed": recipe.run.seed,
        "max_steps": t.max_steps,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "weight_decay": t.weight_decay,
        "adam_beta2": t.adam_beta2,
        "warmup_steps": t.warmup_steps,
        "lr_scheduler_type": t.lr_scheduler_type,
        "lr_scheduler_kwargs": dict(t.lr_scheduler_kwargs),
        "max_grad_norm": t.max_grad_norm,
        "logging_steps": t.logging_steps,
        "save_strategy": "steps" if t.save_steps else "no",
        "save_steps": t.save_steps or 500,
        "save_total_limit": t.save_total_limit,
        "bf16": t.bf16,
        "report_to": list(t.report_to),
        "use_cpu": not torch.cuda.is_available(),
        **fsdp_training_arguments(t.fsdp),  # CUDA only (refused on a CPU by the recipe check)
        # multi-process launches: gloo on CPU, no unused-parameter search
        **distributed_training_arguments(deepspeed=deepspeed),
    }


def training_arguments(recipe: Recipe) -> TrainingArguments:
    t = recipe.trainer
    deepspeed = resolve_deepspeed(t.deepspeed)
    check_scale_out(deepspeed_config=deepspeed, lora_rank=recipe.model.lora_rank)
    if deepspeed:
        _single_process_distributed_env()
    return TrainingArguments(
        **common_training_arguments(recipe, deepspeed=deepspeed is not None),
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        eval_strategy="steps" if t.eval_steps else "no",
        eval_on_start=t.eval_on_start,
        eval_steps=t.eval_steps,
        deepspeed=deepspeed,
        dataloader_num_workers=t.dataloader_num_workers,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        ignore_data_skip=recipe.data.streaming,  # a stream resumes at its recorded block (StreamingResume)
        remove_unused_columns=False,  # the objectives read prompt_mask / answer_lengths, not forward() args
        label_names=[],
    )


def resume_checkpoint(recipe: Recipe, out: Path) -> str | None:
    """trainer.resume_from_checkpoint, checked: "latest" is the newest complete checkpoint-N under `out`; a missing
    or incomplete checkpoint, or one that already reached trainer.max_steps, is a clear error."""
    return resolve_resume(recipe.trainer.resume_from_checkpoint, out, recipe.trainer.max_steps)


def claim_run_dir(recipe: Recipe):
    """Hold run.output_dir for a run: the lock, recovery of an interrupted save, no silent reuse of an earlier run."""
    return claim_output_dir(recipe.run.output_dir, resuming=recipe.trainer.resume_from_checkpoint is not None,
                            overwrite=recipe.run.overwrite)


def save_atomically(out_dir: Path, trainer: Trainer) -> None:
    """Final model + tokenizer (the trainer's processing_class) through `Trainer.save_model` (which gathers ZeRO-3
    shards), staged, sealed and published by one rename or exchange (`textdiff.train.checkpoints`): a kill leaves
    the old complete `final` or the new one. Used by text, image and RL runs."""
    save_model_atomically(trainer, out_dir)


@dataclass
class Job:
    """What a run builds before training, and what it does after: the skeleton calls `evaluate` on every process
    once training ends, then saves, then `report` (results that need the saved model, e.g. samples) on the
    saving process only."""

    trainer: Trainer
    """the HF trainer (DiffusionTrainer, or TRL's GRPO trainer for RL)."""
    results: dict = field(default_factory=dict)
    """what is known before training (model size, data), merged into results.json."""
    evaluate: Callable[[], dict] = dict
    """metrics once training ended (final validation, RL's held-out accuracy)."""
    before_save: Callable[[], None] = lambda: None
    """last changes to the model before it is saved (merging LoRA)."""
    report: Callable[[], dict] = dict
    """results of the saving process after the save (task accuracy, samples)."""


def run(recipe: Recipe, recipe_path: str | None, setup: Callable[[Path], Job]) -> dict:
    """The skeleton every run takes; `setup(out)` builds the job once the output directory is held."""
    start = time.time()
    out = Path(recipe.run.output_dir)
    caller_group = process_group_owned()
    with claim_run_dir(recipe):
        out.mkdir(parents=True, exist_ok=True)
        if os.environ.get("RANK", "0") == "0":  # fail fast, before data and model, on the process holding the dir
            resume_checkpoint(recipe, out)
        set_seed(recipe.run.seed)
        job = setup(out)
        trainer = job.trainer
        train_start = time.time()
        # the trainer (AtomicCheckpoints) resolves the spec again on every rank, after the saving process recovered
        # any interrupted save and the ranks synchronised, so all ranks resume from the same checkpoint
        train_output = trainer.train(resume_from_checkpoint=recipe.trainer.resume_from_checkpoint)
        train_seconds = time.time() - train_start
        results = {"recipe": recipe_path, "family": recipe.family, "config": asdict(recipe), **job.results}
        results.update(job.evaluate())
        job.before_save()
        final_dir = out / "final"
        save_atomically(final_dir, trainer)  # on every rank: it gathers ZeRO-3 shards and synchronises the ranks
        results.update(
            engine=type(trainer.model_wrapped).__name__,
            **scale_results(trainer.args),
            deepspeed_config=trainer.args.deepspeed,
            train_runtime_s=train_seconds,
            train_loss=train_output.metrics.get("train_loss"),
            log_history=trainer.state.log_history,
            checkpoint=str(final_dir),
        )
        if trainer.args.should_save:
            results.update(job.report())
            results["wall_time_s"] = time.time() - start
            atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str))
        end_run_process_group(owned_by_caller=caller_group)
        return results


def train_from_recipe(recipe: Recipe, recipe_path: str | None = None) -> dict:
    """Train a recipe's family end to end; returns (and writes to <output_dir>/results.json) the validation
    metrics, the loss curve and what the family measures after training."""
    family = get_family(recipe.family)

    def setup(out: Path) -> Job:
        built = family.build(recipe, recipe.objective, out)
        model = built.model
        model.config.update({CONFIG_KEY: recipe.family})  # how `textdiff sample` finds (or imports) the family
        n_params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 partitions the parameters
        m = recipe.model
        if m.lora_rank > 0:
            from textdiff.adapters import apply_lora

            model = apply_lora(model, rank=m.lora_rank, alpha=m.lora_alpha, dropout=m.lora_dropout,
                               target_modules=m.lora_target_modules)
        trainer = DiffusionTrainer(
            model=model, args=training_arguments(recipe), train_dataset=built.train_dataset,
            eval_dataset=built.eval_dataset, data_collator=built.collator, processing_class=built.processing_class,
            objective=built.objective, elbo_samples=recipe.eval.elbo_samples, eval_seed=recipe.eval.seed,
        )

        def merge_lora() -> None:  # the final checkpoint is the plain model with the LoRA updates merged in
            if m.lora_rank > 0:
                from textdiff.adapters import merge_lora

                trainer.model = trainer.model_wrapped = merge_lora(trainer.model)

        results = {"data": built.data_meta, "model_parameters": n_params,
                   "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
        return Job(trainer=trainer, results=results,
                   evaluate=lambda: {"final_eval": trainer.evaluate(), **trainer.stream_results()}, before_save=merge_lora, report=lambda: family.after_training(trainer.model, built, recipe, out))

    return run(recipe, recipe_path, setup)
