"""Prompts -> images / videos: the one continuous loop on a DiT checkpoint, with CFG and NFE accounting, and
`textdiff sample` writing a PNG grid (images) or a GIF + frame strip (video)."""

import pytest
import torch
from PIL import Image

from textdiff.cli import main
from textdiff.modeling import DiTConfig, DiTModel
from textdiff.pipelines.visual import dit_denoiser, save_image_grid, save_video
from textdiff.samplers.continuous import sample_continuous
from textdiff.samplers.flow import FlowEulerSampler
from textdiff.samplers.guidance import ClassifierFreeGuidance


def tiny_text_dit(frames=1, size=8, patch=2) -> DiTModel:
    torch.manual_seed(0)
    model = DiTModel(DiTConfig(sample_size=size, num_frames=frames, patch_size=patch, hidden_size=24,
                               num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_guided_loop_batches_cond_and_uncond_and_counts_nfe():
    model = tiny_text_dit()
    g = torch.Generator().manual_seed(0)
    cond = {"encoder_hidden_states": torch.randn(2, 3, 384, generator=g),
            "encoder_attention_mask": torch.ones(2, 3, dtype=torch.long), "pooled_text": torch.randn(2, 384, generator=g)}
    uncond = {**cond, "encoder_attention_mask": torch.zeros(2, 3, dtype=torch.long),
              "pooled_text": torch.zeros(2, 384)}
    noise = torch.randn(2, 1, 8, 8, generator=g)
    guided = sample_continuous(dit_denoiser(model), FlowEulerSampler(), noise, num_steps=4, cond=cond, uncond=uncond,
                               guidance=ClassifierFreeGuidance(scale=3.0))
    assert guided.nfe == 8
    plain = sample_continuous(dit_denoiser(model), FlowEulerSampler(), noise, num_steps=4, cond=cond)
    off = sample_continuous(dit_denoiser(model), FlowEulerSampler(), noise, num_steps=4, cond=cond, uncond=uncond,
                            guidance=ClassifierFreeGuidance(scale=1.0))
    assert plain.nfe == off.nfe == 4 and torch.equal(off.sample, plain.sample)
    assert not torch.allclose(guided.sample, plain.sample)
    slg = sample_continuous(dit_denoiser(model), FlowEulerSampler(), noise, num_steps=10, cond=cond, skip_layers=[0],
                            skip_layer_scale=2.0)
    assert slg.nfe == 10 + 1  # one extra pass inside the (0.1, 2) window


def test_grid_and_video_writers(tmp_path):
    images = torch.linspace(-1, 1, 6 * 64).reshape(6, 1, 8, 8)
    path = save_image_grid(images, tmp_path / "grid.png", nrow=3, scale=2)
    assert Image.open(path).size == (2 * (3 * 9 + 1), 2 * (2 * 9 + 1))
    videos = torch.rand(2, 1, 3, 8, 8) * 2 - 1
    gif, strip = save_video(videos, tmp_path / "v.gif", tmp_path / "v.png", scale=1)
    assert Image.open(gif).n_frames == 3 and Image.open(strip).size == (3 * 9 + 1, 2 * 9 + 1)


@pytest.mark.parametrize("frames", [1, 2])
def test_cli_sample_writes_png_or_gif(tmp_path, monkeypatch, frames):
    monkeypatch.setenv("TEXTDIFF_CACHE", str(tmp_path / "cache"))
    model = tiny_text_dit(frames=frames, size=8, patch=4 if frames > 1 else 2)
    model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / ("s.png" if frames == 1 else "s.gif")
    rc = main(["sample", str(tmp_path / "ckpt"), "--prompt", "a handwritten seven", "--prompt", "a handwritten one",
               "--steps", "3", "--num-samples", "2", "--output", str(out)])
    assert rc == 0
    if frames == 1:
        assert Image.open(out).size == (4 * (2 * 9 + 1), 4 * (2 * 9 + 1))
    else:
        assert Image.open(out).n_frames == 2 and (tmp_path / "s_strip.png").exists()
