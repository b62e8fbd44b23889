"""Train from a recipe: data -> tokenizer -> model -> objective -> DiffusionTrainer -> evaluation -> results.json."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, set_seed

from textdiff.config import DataConfig, Recipe
from textdiff.data import (
    PackedCollator,
    SFTCollator,
    ensure_mask_token,
    load_corpus,
    load_tokenizer,
    pack_dataset,
)
from textdiff.data.corpora import check_training_splits
from textdiff.data.tasks import get_task
from textdiff.modeling import TextDiffConfig, TextDiffModel
from textdiff.modeling.checkpoint_io import load_model as load_checkpoint_model
from textdiff.modeling.checkpoint_io import load_tokenizer as load_checkpoint_tokenizer
from textdiff.objectives import build_objective
from textdiff.train.checkpoints import (
    atomic_write_text,
    claim_output_dir,
    resolve_resume,
    save_model_atomically,
)
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


def excluded_train_keys(data: DataConfig) -> frozenset[str]:
    """Keys of the first `data.exclude_train_examples` train problems drawn with `data.exclude_seed` (another
    recipe's training problems, e.g. the SFT run's, so RL prompts are new); empty when nothing is excluded."""
    if data.exclude_train_examples < 0:
        raise ValueError(f"data.exclude_train_examples must be >= 0, got {data.exclude_train_examples}")
    if not data.exclude_train_examples:
        return frozenset()
    if not data.task:
        raise ValueError("data.exclude_train_examples needs data.task: it leaves out problems of a synthetic task")
    task = get_task(data.task, **data.task_kwargs)
    return frozenset(p.meta["key"] for p in task.generate(data.exclude_train_examples, "train", data.exclude_seed))


def build_data(recipe: Recipe, tokenizer_dir: Path | None):
    """Return (tokenizer, train_dataset, valid_dataset, collator, data_meta)."""
    data, tok_cfg = recipe.data, recipe.tokenizer
    excluded = excluded_train_keys(data)  # before the branches: an exclusion without data.task is an error
    if data.task:
        task = get_task(data.task, **data.task_kwargs)
        train = task.to_dataset(data.num_train_examples, "train", recipe.run.seed, excluded)
        valid = task.to_dataset(data.num_valid_examples, "valid", recipe.run.seed)
        texts = (p + " " + a for p, a in zip(train["prompt"], train["answer"]))
        meta = {"task": data.task, "task_kwargs": dict(data.task_kwargs), "n_train": len(train), "n_valid": len(valid)}
    else:
        if not data.corpus:
            raise ValueError("the recipe sets neither data.corpus nor data.task")
        sources = [s.strip() for s in data.corpus.split(",")] if "," in data.corpus else data.corpus
        corpus = load_corpus(sources, text_field=data.text_field, valid_percent=data.valid_percent)
        train, valid, meta = corpus.train, corpus.valid, dict(corpus.meta)
        texts = train["text"]

    if tokenizer_dir is not None:
        tokenizer = load_checkpoint_tokenizer(tokenizer_dir, what="model.init_from")
    else:
        cache_dir = Path(recipe.run.output_dir) / "tokenizer"
        tokenizer = load_tokenizer(
            tok_cfg.name, train_texts=texts, vocab_size=tok_cfg.vocab_size, cache_dir=cache_dir,
            split_digits=tok_cfg.split_digits,
        )

    if data.task:
        collator = SFTCollator(tokenizer, max_length=data.max_length, pad_to=data.pad_to, answer_length=data.answer_length)
        return tokenizer, train, valid, collator, meta
    train = pack_dataset(train, tokenizer, data.seq_len)
    valid = pack_dataset(valid, tokenizer, data.seq_len)
    check_training_splits(meta, len(train), len(valid), data.seq_len)
    if data.max_valid_blocks is not None and len(valid) > data.max_valid_blocks:
        valid = valid.select(range(data.max_valid_blocks))
    meta.update(train_blocks=len(train), valid_blocks=len(valid), seq_len=data.seq_len)
    return tokenizer, train, valid, PackedCollator(), meta


def build_model(recipe: Recipe, tokenizer, attention_mode: str, init_dir: str | None = None) -> TextDiffModel:
    """A random model of the recipe's size, or the checkpoint `init_dir` (default: model.init_from)."""
    m = recipe.model
    init_dir = init_dir or m.init_from
    if init_dir:
        if not Path(init_dir).is_dir():
            raise FileNotFoundError(f"model.init_from={init_dir!r} is not a checkpoint directory")
        model = load_checkpoint_model(init_dir, what="model.init_from")
        if model.config.vocab_size < len(tokenizer):
            raise ValueError(
                f"vocab mismatch: checkpoint {init_dir} has vocab_size {model.config.vocab_size} but its "
                f"tokenizer has {len(tokenizer)} tokens"
            )
        # a checkpoint whose tokenizer has no [MASK] gets one only if the embedding has a spare row
        mask_id = ensure_mask_token(tokenizer, max_vocab_size=model.config.vocab_size)
        if model.config.mask_token_id is None:
            model.config.mask_token_id = mask_id
        elif model.config.mask_token_id != mask_id:
            raise ValueError(
                f"checkpoint {init_dir}: config.mask_token_id={model.config.mask_token_id} but its tokenizer's "
                f"[MASK] is {mask_id}"
            )
        _check_logit_shift(model.config, recipe.objective.logit_shift, init_dir)
        model.config.attention_mode = attention_mode
        return model
    need = recipe.data.max_length if recipe.data.task else recipe.data.seq_len
    if need > m.max_position_embeddings:
        raise ValueError(f"sequence length {need} exceeds model.max_position_embeddings={m.max_position_embeddings}")
    config = TextDiffConfig(
        vocab_size=len(tokenizer),
        hidden_size=m.hidden_size,
        num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_key_value_heads,
        intermediate_size=m.intermediate_size,
        max_position_embeddings=m.max_position_embeddings,
        rope_theta=m.rope_theta,
        attention_mode=attention_mode,
        block_size=m.block_size,
        time_conditioning=m.time_conditioning,
        tie_word_embeddings=m.tie_word_embeddings,
        mask_token_id=tokenizer.mask_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        logit_shift=recipe.objective.logit_shift,
    )
    return TextDiffModel(config)


def _check_logit_shift(config: TextDiffConfig, logit_shift: bool, init_dir: str) -> None:
    """An AR (causal) checkpoint may be adapted with or without the shift; a diffusion checkpoint keeps its own."""
    if config.attention_mode != "causal" and config.logit_shift != logit_shift:
        raise ValueError(
            f"checkpoint {init_dir} was trained with logit_shift={config.logit_shift}; set "
            f"objective.logit_shift={str(config.logit_shift).lower()} to continue it"
        )
    config.logit_shift = logit_shift


def build_objective_from_recipe(recipe: Recipe, mask_token_id: int | None):
    o = recipe.objective
    if o.name == "ar":
        return build_objective("ar")
    return build_objective(
        o.name,
        mask_token_id=mask_token_id,
        schedule=o.schedule,
        eps=o.eps,
        antithetic=o.antithetic,
        normalization=o.normalization,
        random_truncation=o.random_truncation,
        logit_shift=o.logit_shift,
        anneal_steps=o.anneal_steps,
    )


def common_training_arguments(recipe: Recipe) -> dict:
    """The run / trainer settings every HF trainer of textdiff takes (TrainingArguments, TRL's GRPOConfig)."""
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
    }


def training_arguments(recipe: Recipe) -> TrainingArguments:
    t = recipe.trainer
    deepspeed = resolve_deepspeed(t.deepspeed)
    if deepspeed:
        _single_process_distributed_env()
    return TrainingArguments(
        **common_training_arguments(recipe),
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        eval_strategy="steps" if t.eval_steps else "no",
        eval_on_start=t.eval_on_start,
        eval_steps=t.eval_steps,
        deepspeed=deepspeed,
        dataloader_num_workers=t.dataloader_num_workers,
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


def evaluate_task(model, tokenizer, recipe: Recipe) -> dict:
    """Exact-match accuracy on held-out test problems of the recipe's task, decoded with the recipe's sampler
    settings (greedy) and scored by the task's own verifier."""
    from textdiff.pipelines.text import sample_text

    task = get_task(recipe.data.task, **recipe.data.task_kwargs)
    problems = task.generate(recipe.eval.task_problems, "test", recipe.eval.seed)
    s = recipe.sample
    outputs = sample_text(model, tokenizer, [p.prompt for p in problems], gen_length=s.gen_length, steps=s.steps,
                          block_length=s.block_length)
    correct = [task.verify(p, o["completion"]) for p, o in zip(problems, outputs)]
    return {
        "task": recipe.data.task,
        "split": "test",
        "problems": len(problems),
        "accuracy": sum(correct) / len(correct),
        "decoding": {"gen_length": s.gen_length, "steps": s.steps, "block_length": s.block_length, "temperature": 0.0},
        "examples": [
            {"prompt": p.prompt, "answer": p.answer, "completion": o["completion"], "correct": c}
            for p, o, c in list(zip(problems, outputs, correct))[:8]
        ],
    }


def train_from_recipe(recipe: Recipe, recipe_path: str | None = None) -> dict:
    """Run a recipe end to end; returns (and writes to <output_dir>/results.json) metrics and the loss curve."""
    with claim_run_dir(recipe):
        if recipe.data.images:  # text-to-image / video: DiT + flow matching on the same trainer
            from textdiff.train.images import train_images_from_recipe

            return train_images_from_recipe(recipe, recipe_path)
        return _train_text(recipe, recipe_path)


def _train_text(recipe: Recipe, recipe_path: str | None) -> dict:
    start = time.time()
    out = Path(recipe.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resume = resume_checkpoint(recipe, out)  # before the data and model: a bad resume fails at once
    set_seed(recipe.run.seed)

    objective_mode = "causal" if recipe.objective.name == "ar" else "bidirectional"
    attention_mode = recipe.model.attention_mode or objective_mode
    init_dir = None
    if recipe.model.init_from:  # 'smollm2' or an HF causal-LM directory is converted once into <output>/converted
        from textdiff.adapters import ensure_textdiff_checkpoint

        init_dir = str(ensure_textdiff_checkpoint(recipe.model.init_from, out / "converted"))
    tokenizer, train, valid, collator, data_meta = build_data(recipe, init_dir)
    model = build_model(recipe, tokenizer, attention_mode, init_dir)
    objective = build_objective_from_recipe(recipe, model.config.mask_token_id)
    n_params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 partitions the parameters
    if recipe.model.lora_rank > 0:
        from textdiff.adapters import apply_lora

        m = recipe.model
        model = apply_lora(model, rank=m.lora_rank, alpha=m.lora_alpha, dropout=m.lora_dropout,
                           target_modules=m.lora_target_modules)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    args = training_arguments(recipe)
    trainer = DiffusionTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=valid,
        data_collator=collator,
        processing_class=tokenizer,
        objective=objective,
        elbo_samples=recipe.eval.elbo_samples,
        eval_seed=recipe.eval.seed,
    )
    train_output = trainer.train(resume_from_checkpoint=resume)
    metrics = trainer.evaluate()
    if recipe.model.lora_rank > 0:  # the final checkpoint is the plain model with the LoRA updates merged in
        from textdiff.adapters import merge_lora

        trainer.model = trainer.model_wrapped = merge_lora(trainer.model)
    final_dir = out / "final"
    if trainer.args.should_save:
        save_atomically(final_dir, trainer)

    results = {
        "recipe": recipe_path,
        "config": asdict(recipe),
        "data": data_meta,
        "model_parameters": n_params,
        "trainable_parameters": n_trainable,
        "engine": type(trainer.model_wrapped).__name__,
        "deepspeed_config": trainer.args.deepspeed,
        "final_eval": metrics,
        "train_runtime_s": train_output.metrics.get("train_runtime"),
        "train_loss": train_output.metrics.get("train_loss"),
        "log_history": trainer.state.log_history,
        "checkpoint": str(final_dir),
        "wall_time_s": time.time() - start,
    }
    if recipe.data.task and recipe.eval.task_problems > 0 and trainer.args.should_save:
        results["task_eval"] = evaluate_task(trainer.model, tokenizer, recipe)
    if recipe.sample.prompts and trainer.args.should_save:
        from textdiff.pipelines.text import sample_text

        results["samples"] = sample_text(
            trainer.model,
            tokenizer,
            recipe.sample.prompts,
            gen_length=recipe.sample.gen_length,
            steps=recipe.sample.steps,
            block_length=recipe.sample.block_length,
            use_chat_template=recipe.sample.use_chat_template,
        )
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str))
    return results
