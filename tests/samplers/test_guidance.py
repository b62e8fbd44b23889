"""Guidance: exact identities at the off / uncond scales, the LLaDA <-> standard scale mapping, rescale,
interval, CFG-Zero*, skip-layer guidance, and Imagen thresholding against hand-computed cases. The same guider
runs on text logits [B, L, V] and on image / video tensors."""

import pytest
import torch

from textdiff.samplers.guidance import (
    ClassifierFreeGuidance,
    dynamic_threshold,
    guidance_rescale,
    skip_layer_guidance,
    static_threshold,
)

SHAPES = [(2, 5, 11), (2, 1, 8, 8), (2, 1, 3, 4, 4)]  # text logits, image, video


def _pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 50, torch.randn(shape, generator=g) * 50


@pytest.mark.parametrize("shape", SHAPES)
def test_identity_scales_return_the_inputs_exactly(shape):
    cond, uncond = _pair(shape)
    assert torch.equal(ClassifierFreeGuidance(scale=1.0)(cond, uncond), cond)
    assert torch.equal(ClassifierFreeGuidance(scale=0.0)(cond, uncond), uncond)
    assert torch.equal(ClassifierFreeGuidance(scale=0.0, formulation="original")(cond, uncond), cond)
    assert torch.equal(ClassifierFreeGuidance(scale=-1.0, formulation="original")(cond, uncond), uncond)
    assert not ClassifierFreeGuidance(scale=1.0).is_enabled(0, 10)  # no unconditional pass needed


@pytest.mark.parametrize("shape", SHAPES)
def test_scale_conventions_and_llada_mapping(shape):
    cond, uncond = _pair(shape, 1)
    w = 3.5
    standard = ClassifierFreeGuidance(scale=w)(cond, uncond)
    torch.testing.assert_close(standard, uncond + w * (cond - uncond))
    original = ClassifierFreeGuidance(scale=w - 1, formulation="original")(cond, uncond)
    torch.testing.assert_close(original, cond + (w - 1) * (cond - uncond))  # Ho & Salimans form
    torch.testing.assert_close(original, standard)
    # LLaDA generate(): logits = un + (cfg + 1)(cond - un), bit for bit
    cfg = 2.0
    llada = uncond + (cfg + 1) * (cond - uncond)
    assert torch.equal(ClassifierFreeGuidance(scale=cfg, formulation="original")(cond, uncond), llada)


def test_text_generate_uses_the_guider(tiny_model_factory):
    """textdiff.generate's cfg path equals a hand-written LLaDA CFG loop on the same model (one step, greedy)."""
    from textdiff import generate

    model = tiny_model_factory()
    prompt = torch.tensor([[5, 6, 7, 8]])
    out = generate(model, prompt, gen_length=4, steps=4, block_length=4, cfg_scale=1.5).sequences
    x = torch.cat([prompt, torch.full((1, 4), 66)], 1)
    for _ in range(4):
        un = x.clone()
        un[:, :4] = 66
        logits = model(torch.cat([x, un])).logits
        cond, uncond = logits.chunk(2)
        guided = uncond + 2.5 * (cond - uncond)
        masked = x == 66
        probs = torch.softmax(guided, -1)
        conf, pred = probs.max(-1)
        conf = torch.where(masked, conf, torch.full_like(conf, -float("inf")))
        i = conf.argmax(-1)
        x[0, i] = pred[0, i]
    assert torch.equal(out, x)


def test_guidance_rescale():
    cond, uncond = _pair((3, 4, 8, 8), 2)
    guided = ClassifierFreeGuidance(scale=7.0)(cond, uncond)
    full = ClassifierFreeGuidance(scale=7.0, rescale=1.0)(cond, uncond)
    torch.testing.assert_close(full.flatten(1).std(1), cond.flatten(1).std(1))
    half = ClassifierFreeGuidance(scale=7.0, rescale=0.5)(cond, uncond)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * guided)
    per_position = guidance_rescale(guided[:, 0], cond[:, 0], 1.0, dims=(-1,))  # e.g. text logits per position
    torch.testing.assert_close(per_position.std(-1), cond[:, 0].std(-1))


def test_interval_guidance():
    cond, uncond = _pair((2, 6), 3)
    guide = ClassifierFreeGuidance(scale=5.0, start=0.2, stop=0.6)
    enabled = [guide.is_enabled(i, 10) for i in range(10)]
    assert enabled == [False, False, True, True, True, True, False, False, False, False]
    assert torch.equal(guide(cond, None, step=0, num_steps=10), cond)
    torch.testing.assert_close(guide(cond, uncond, step=3, num_steps=10), uncond + 5.0 * (cond - uncond))
    with pytest.raises(ValueError, match="unconditional"):
        guide(cond, None, step=3, num_steps=10)
    with pytest.raises(ValueError, match="start"):
        ClassifierFreeGuidance(start=0.5, stop=0.2)


def test_cfg_zero_star():
    cond = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]])
    uncond = torch.tensor([[0.5, 1.0, 1.5], [1.0, 0.0, 0.0]])
    guide = ClassifierFreeGuidance(scale=4.0, zero_star=True, zero_init_steps=1)
    assert torch.equal(guide(cond, uncond, step=0, num_steps=10), torch.zeros_like(cond))
    assert not guide.is_enabled(0, 10) and guide.is_enabled(1, 10)
    out = guide(cond, uncond, step=1, num_steps=10)
    # row 0: u = c / 2 -> alpha = 2, alpha u = c, so p = c at any scale; row 1: <c, u> = 0 -> alpha = 0, p = w c
    torch.testing.assert_close(out[0], cond[0])
    torch.testing.assert_close(out[1], 4.0 * cond[1])


def test_skip_layer_guidance_window():
    guided, cond, skip = torch.zeros(1, 3), torch.ones(1, 3), torch.full((1, 3), 0.25)
    # SD3 pipeline: active while N * start < step < N * stop
    active = [i for i in range(28) if not torch.equal(skip_layer_guidance(guided, cond, skip, 2.8, i, 28), guided)]
    assert active == [1, 2, 3, 4, 5]
    torch.testing.assert_close(skip_layer_guidance(guided, cond, skip, 2.8, 3, 28), torch.full((1, 3), 2.1))


def test_static_threshold():
    x0 = torch.tensor([[-3.0, -0.5, 0.25, 1.75]])
    assert static_threshold(x0).tolist() == [[-1.0, -0.5, 0.25, 1.0]]
    assert static_threshold(x0, bound=2.0).tolist() == [[-2.0, -0.5, 0.25, 1.75]]


def test_dynamic_threshold_hand_computed():
    x0 = torch.tensor([[0.5, -3.0, 2.0, 1.0], [0.2, -0.4, 0.6, 0.9]])
    # row 0: |x| sorted = [0.5, 1, 2, 3]; p = 1 -> s = 3; p = 0.5 -> s = 1.5 (linear interpolation between 1 and 2)
    out = dynamic_threshold(x0, percentile=1.0)
    torch.testing.assert_close(out[0], torch.tensor([0.5 / 3, -1.0, 2 / 3, 1 / 3]))
    # row 1: every |x| < 1 -> s is clamped to 1 -> unchanged (Imagen only acts when s > 1)
    torch.testing.assert_close(out[1], x0[1])
    half = dynamic_threshold(x0, percentile=0.5)
    torch.testing.assert_close(half[0], torch.tensor([0.5 / 1.5, -1.0, 1.0, 1 / 1.5]))
    # diffusers' sample_max_value caps s: with max 1 it is plain static clipping
    torch.testing.assert_close(dynamic_threshold(x0, percentile=1.0, max_value=1.0), static_threshold(x0))
    with pytest.raises(ValueError, match="percentile"):
        dynamic_threshold(x0, percentile=0.0)


def test_dynamic_threshold_is_per_sample_on_videos():
    x0 = torch.zeros(2, 1, 2, 2, 2)
    x0[0, 0, 0, 0, 0] = 4.0  # only sample 0 saturates
    x0[1, 0, 1, 1, 1] = 0.5
    out = dynamic_threshold(x0, percentile=1.0)
    assert out[0].max().item() == 1.0 and out[1].max().item() == 0.5


def _diffusers_threshold_cases():
    import json
    from pathlib import Path

    path = Path(__file__).parents[1] / "fixtures" / "diffusers_golden.json"
    return json.loads(path.read_text())["threshold"]


@pytest.mark.parametrize("case", _diffusers_threshold_cases(), ids=lambda c: f"{c['shape']}-p{c['ratio']}")
def test_dynamic_threshold_float64_equals_diffusers(case):
    """float64 stays float64 (no float32 quantile): equal to diffusers' `_threshold_sample` to 1e-12
    (golden from tests/fixtures/make_diffusers_golden.py)."""
    x0 = torch.tensor(case["input"], dtype=torch.float64).reshape(case["shape"])
    out = dynamic_threshold(x0, percentile=case["ratio"], max_value=case["max_value"])
    assert out.dtype == torch.float64
    expected = torch.tensor(case["output"], dtype=torch.float64).reshape(case["shape"])
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    assert not torch.equal(out, x0)  # the threshold binds


def test_dynamic_threshold_half_precision_computes_in_float32():
    x0 = (torch.arange(16, dtype=torch.float32).reshape(2, 8) / 3 - 2).to(torch.bfloat16)
    out = dynamic_threshold(x0, percentile=0.9, max_value=2.0)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, dynamic_threshold(x0.float(), percentile=0.9, max_value=2.0).to(torch.bfloat16))
