"""Prompts in, images / videos out: the glue between a text-conditional DiT, its frozen text encoder and the one
continuous sampling loop; plus PNG grids, GIFs and frame strips."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from textdiff.modeling.text_encoder import CaptionEmbeddings
from textdiff.samplers.continuous import build_continuous_sampler, sample_continuous
from textdiff.samplers.guidance import ClassifierFreeGuidance

__all__ = ["dit_denoiser", "sample_visual", "save_image_grid", "save_video"]


def dit_denoiser(model):
    """denoiser(x, t, **cond) for `sample_continuous`: flow timesteps sigma * 1000 -> the DiT's sigma in [0, 1]."""

    def denoise(x, t, skip_layers=None, **cond):
        return model(x, t / 1000.0, skip_layers=skip_layers, **cond).sample

    return denoise


@torch.no_grad()
def sample_visual(
    model,
    prompts: list[str],
    *,
    num_per_prompt: int = 1,
    steps: int = 28,
    guidance_scale: float = 4.0,
    solver: str = "euler",
    shift: float = 1.0,
    seed: int = 0,
    embeddings: CaptionEmbeddings | None = None,
    guidance: ClassifierFreeGuidance | None = None,
    x0_hook=None,
) -> torch.Tensor:
    """Samples [len(prompts) * num_per_prompt, C, (T,) H, W] in model space, prompt-major; clipped to
    `config.data_range`. `guidance_scale` is the standard CFG weight (1 = off); pass `guidance` for the other
    variants. The same seed gives the same initial noise whatever the guidance, so runs compare pairwise."""
    cfg = model.config
    was_training = model.training
    model.eval()
    if embeddings is None:
        embeddings = CaptionEmbeddings(prompts, encoder=cfg.text_encoder, max_length=cfg.max_text_length)
    captions = [p for p in prompts for _ in range(num_per_prompt)]
    cond = embeddings.lookup(captions)
    length = max(int(cond["encoder_attention_mask"].sum(1).max()), 1)
    cond = {k: (v[:, :length] if v.dim() > 2 or k == "encoder_attention_mask" else v).to(model.device)
            for k, v in cond.items()}
    uncond = {"encoder_hidden_states": cond["encoder_hidden_states"],
              "encoder_attention_mask": torch.zeros_like(cond["encoder_attention_mask"]),
              "pooled_text": torch.zeros_like(cond["pooled_text"])}
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(captions), *cfg.sample_shape), generator=generator).to(model.device)
    if solver == "ddim":
        raise ValueError("the DiT predicts flow velocities: use a flow solver (euler, heun, dpmpp_2m), not 'ddim'")
    sampler = build_continuous_sampler(solver, shift=shift, x0_hook=x0_hook)
    guidance = guidance or ClassifierFreeGuidance(scale=guidance_scale)
    out = sample_continuous(dit_denoiser(model), sampler, noise, num_steps=steps, cond=cond, uncond=uncond,
                            guidance=guidance, generator=generator)
    model.train(was_training)
    low, high = cfg.data_range
    return out.sample.clamp(low, high).cpu()


def _to_uint8(x: torch.Tensor, data_range) -> np.ndarray:
    low, high = data_range
    return ((x.float().clamp(low, high) - low) / (high - low) * 255).round().byte().numpy()


def save_image_grid(images: torch.Tensor, path: str | Path, *, nrow: int, data_range=(-1.0, 1.0), scale: int = 4,
                    pad: int = 1) -> Path:
    """Images [N, C, H, W] (C = 1 or 3) -> one PNG, `nrow` images per row, each upscaled `scale`x."""
    from PIL import Image

    n, c, h, w = images.shape
    rows = -(-n // nrow)
    pixels = _to_uint8(images, data_range)  # [N, C, H, W]
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 128, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = \
            pixels[i].transpose(1, 2, 0)
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def save_video(videos: torch.Tensor, gif_path: str | Path | None = None, strip_path: str | Path | None = None, *,
               data_range=(-1.0, 1.0), scale: int = 4, fps: int = 4) -> list[Path]:
    """Videos [N, C, T, H, W] -> an animated GIF (all clips side by side) and / or a PNG strip (one clip per row,
    frames left to right); returns the written paths in that order."""
    from PIL import Image

    n, c, t, h, w = videos.shape
    written = []
    if gif_path is not None:
        pad = 1
        pixels = _to_uint8(videos, data_range)  # [N, C, T, H, W]
        images = []
        for f in range(t):
            canvas = np.full((h + 2 * pad, n * (w + pad) + pad), 128, dtype=np.uint8)
            for i in range(n):
                canvas[pad: pad + h, pad + i * (w + pad): pad + i * (w + pad) + w] = pixels[i, 0, f]
            img = Image.fromarray(canvas)
            images.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST))
        gif_path = Path(gif_path)
        gif_path.parent.mkdir(parents=True, exist_ok=True)
        images[0].save(gif_path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        written.append(gif_path)
    if strip_path is not None:
        frames = videos.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)  # clip-major, frames in order
        written.append(save_image_grid(frames, strip_path, nrow=t, data_range=data_range, scale=scale))
    return written


def _check_visual_sample_args(args: argparse.Namespace) -> None:
    from textdiff.samplers.continuous import CONTINUOUS_SAMPLERS

    solvers = [name for name in CONTINUOUS_SAMPLERS if name != "ddim"]  # the DiT predicts flow velocities
    for flag, ok, valid in (
        ("--steps", args.steps >= 1, "must be >= 1"),
        ("--num-samples", args.num_samples >= 1, "must be >= 1"),
        ("--guidance-scale", args.guidance_scale >= 0, "must be >= 0 (1 = no guidance)"),
        ("--shift", args.shift > 0, "must be > 0"),
        ("--solver", args.solver in solvers, f"must be one of {', '.join(solvers)}"),
    ):
        if not ok:
            raise ValueError(f"{flag} {valid}, got {getattr(args, flag[2:].replace('-', '_'))}")
    # options of the text decoders, which an image / video checkpoint would silently ignore
    text_only = {"--temperature": args.temperature != 0, "--sampler": args.sampler != "low_confidence",
                 "--cache": args.cache != "none", "--cfg-scale": args.cfg_scale != 0,
                 "--threshold": args.threshold is not None, "--factor": args.factor is not None,
                 "--alg-temp": args.alg_temp is not None, "--stop-at-eos": args.stop_at_eos,
                 "--suppress-eos": args.suppress_eos, "--show-steps": args.show_steps, "--json": args.json,
                 "--no-chat-template": args.no_chat_template, "--gen-length": args.gen_length != 64,
                 "--block-length": args.block_length != 32}
    given = [flag for flag, is_set in text_only.items() if is_set]
    if given:
        raise ValueError(f"{', '.join(given)}: text decoding options, but this is an image / video checkpoint "
                         "(use --guidance-scale, --solver, --shift, --steps, --num-samples, --output)")


def sample_cli(checkpoint: str, config: dict, args: argparse.Namespace) -> int:
    """`textdiff sample` for a text-to-image / video checkpoint: a PNG grid (one row per prompt) or a GIF + frame
    strip."""
    from textdiff.modeling.checkpoint_io import load_model

    _check_visual_sample_args(args)
    model = load_model(checkpoint).eval()
    samples = sample_visual(model, args.prompt, num_per_prompt=args.num_samples, steps=args.steps,
                            guidance_scale=args.guidance_scale, solver=args.solver, shift=args.shift, seed=args.seed)
    if model.config.num_frames == 1:
        files = [save_image_grid(samples, args.output or "samples.png", nrow=args.num_samples)]
    else:
        stem = os.path.splitext(args.output or "samples.gif")[0]
        files = save_video(samples, f"{stem}.gif", f"{stem}_strip.png")
    for path in files:
        print(f"wrote {path}")
    return 0
