"""Train a text-to-image / text-to-video DiT from a recipe (`data.images` set, `objective.name: flow`):
captioned data -> cached frozen-encoder caption embeddings -> DiTModel on the shared trunk -> flow matching on
the same DiffusionTrainer -> results.json (+ a sample grid of `sample.prompts`)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from transformers import AutoModel, set_seed

from textdiff.config import Recipe
from textdiff.data.images import (
    CaptionedSampleCollator,
    digits_t2i_dataset,
    image_caption,
    moving_digits_t2v_dataset,
    video_caption,
)
from textdiff.modeling.dit import DiTConfig, DiTModel
from textdiff.modeling.text_encoder import CaptionEmbeddings
from textdiff.objectives import build_objective
from textdiff.train.trainer import DiffusionTrainer

IMAGE_DATASETS = ("digits", "moving_digits")


def build_image_data(recipe: Recipe):
    """(train, valid, collator, data_meta, sample_shape_kwargs) for `data.images`."""
    data, m = recipe.data, recipe.model
    kwargs = dict(data.image_kwargs)
    if data.images == "digits":
        if kwargs:
            raise ValueError(f"data.images=digits takes no data.image_kwargs, got {sorted(kwargs)}")
        train = digits_t2i_dataset("train")
        valid = digits_t2i_dataset("test", all_templates=False)
        valid = valid.select(range(min(len(valid), data.num_valid_examples)))
        captions = sorted({image_caption(d, k) for d in range(10) for k in range(3)})
        shape = {"in_channels": 1, "sample_size": 8, "num_frames": 1}
    elif data.images == "moving_digits":
        allowed = {"num_frames", "speed", "canvas"}
        if set(kwargs) - allowed:
            raise ValueError(f"unknown data.image_kwargs {sorted(set(kwargs) - allowed)}; valid: {sorted(allowed)}")
        train = moving_digits_t2v_dataset("train", data.num_train_examples, seed=recipe.run.seed, **kwargs)
        valid = moving_digits_t2v_dataset("test", data.num_valid_examples, seed=recipe.run.seed, **kwargs)
        captions = sorted({video_caption(d, r) for d in range(10) for r in ("left", "right", "up", "down")})
        shape = {"in_channels": 1, "sample_size": kwargs.get("canvas", 16), "num_frames": kwargs.get("num_frames", 4)}
    else:
        raise ValueError(f"unknown data.images {data.images!r}; valid: {', '.join(IMAGE_DATASETS)}")
    embeddings = CaptionEmbeddings(captions, encoder=m.text_encoder, max_length=m.max_text_length)
    meta = {"images": data.images, "image_kwargs": kwargs, "n_train": len(train), "n_valid": len(valid),
            "captions": len(captions), "sample_shape": None}
    return train, valid, CaptionedSampleCollator(embeddings), meta, shape


def build_dit(recipe: Recipe, shape: dict) -> DiTModel:
    m = recipe.model
    if m.init_from:
        if not Path(m.init_from).is_dir():
            raise FileNotFoundError(f"model.init_from={m.init_from!r} is not a checkpoint directory")
        return AutoModel.from_pretrained(m.init_from)
    config = DiTConfig(
        **shape, patch_size=m.patch_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads, num_key_value_heads=m.num_key_value_heads,
        intermediate_size=m.intermediate_size, text_encoder=m.text_encoder, max_text_length=m.max_text_length,
    )
    return DiTModel(config)


def train_images_from_recipe(recipe: Recipe, recipe_path: str | None = None) -> dict:
    """Like `train_from_recipe` for image / video recipes; eval_loss is the validation flow-matching MSE
    (stratified sigmas, fixed seed), not a likelihood."""
    from textdiff.train.checkpoints import atomic_write_text
    from textdiff.train.run import resume_checkpoint, save_atomically, training_arguments

    start = time.time()
    out = Path(recipe.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resume = resume_checkpoint(recipe, out)  # before the data and model: a bad resume fails at once
    set_seed(recipe.run.seed)
    if recipe.objective.name != "flow":
        raise ValueError(f"data.images needs objective.name=flow, got {recipe.objective.name!r}")
    train, valid, collator, data_meta, shape = build_image_data(recipe)
    model = build_dit(recipe, shape)
    data_meta["sample_shape"] = list(model.config.sample_shape)
    o = recipe.objective
    objective = build_objective("flow", timestep_sampling=o.timestep_sampling, logit_mean=o.logit_mean,
                                logit_std=o.logit_std, mode_scale=o.mode_scale, shift=o.shift, weighting=o.weighting,
                                cond_drop_prob=o.cond_drop_prob)
    n_params = sum(p.numel() for p in model.parameters())
    trainer = DiffusionTrainer(model=model, args=training_arguments(recipe), train_dataset=train,
                               eval_dataset=valid, data_collator=collator, objective=objective,
                               elbo_samples=recipe.eval.elbo_samples, eval_seed=recipe.eval.seed)
    train_output = trainer.train(resume_from_checkpoint=resume)
    metrics = trainer.evaluate()
    final_dir = out / "final"
    if trainer.args.should_save:
        save_atomically(final_dir, trainer)
    results = {
        "recipe": recipe_path,
        "config": asdict(recipe),
        "data": data_meta,
        "model_parameters": n_params,
        "final_eval": metrics,
        "final_eval_note": "eval_loss = validation flow-matching MSE per sample (not a likelihood)",
        "train_runtime_s": train_output.metrics.get("train_runtime"),
        "train_loss": train_output.metrics.get("train_loss"),
        "log_history": trainer.state.log_history,
        "checkpoint": str(final_dir),
        "wall_time_s": time.time() - start,
    }
    s = recipe.sample
    if s.prompts and trainer.args.should_save:
        from textdiff.samplers.visual import sample_visual, save_image_grid, save_video

        samples = sample_visual(trainer.model, list(s.prompts), num_per_prompt=8, steps=s.steps,
                                guidance_scale=s.guidance_scale, solver=s.solver, seed=recipe.run.seed)
        if model.config.num_frames == 1:
            files = [save_image_grid(samples, out / "samples.png", nrow=8)]
        else:
            files = save_video(samples[::8], out / "samples.gif", out / "samples_strip.png")
        results["samples"] = {"prompts": list(s.prompts), "files": [str(f) for f in files]}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str))
    return results
