"""Flow / VP schedules against golden values computed with diffusers 0.42.1 (tests/golden/flow_schedules.json,
copied from the reference report; diffusers is not needed at test time), plus the shift identities and the
training-time sigma densities."""

import json
import math
from pathlib import Path

import pytest
import torch

from textdiff.schedules import (
    calculate_shift,
    flow_loss_weight,
    flow_model_timesteps,
    flow_sigmas,
    sample_flow_sigmas,
    shift_sigmas,
    time_shift,
    vp_alphas_cumprod,
)

GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "flow_schedules.json").read_text())


def _parse(key: str) -> dict[str, float]:
    return {k: float(v) for k, v in (part.split("=") for part in key.split(","))}


@pytest.mark.parametrize("key", sorted(GOLDEN["flow_match_euler"]))
def test_flow_match_euler_grid_equals_diffusers(key):
    """FlowMatchEulerDiscreteScheduler(shift=s).set_timesteps(n): shift 1 / 3 / 5 at 10 / 28 / 50 steps."""
    p, ref = _parse(key), GOLDEN["flow_match_euler"][key]
    sigmas = flow_sigmas(int(p["steps"]), shift=p["shift"])
    torch.testing.assert_close(sigmas, torch.tensor(ref["sigmas"]), atol=1e-7, rtol=0)
    timesteps = flow_model_timesteps(sigmas[:-1])
    torch.testing.assert_close(timesteps, torch.tensor(ref["timesteps"]), atol=1e-4, rtol=0)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and bool((sigmas[1:] < sigmas[:-1]).all())


def test_double_shift_tail_value():
    """diffusers shifts the 1000-entry table and then the grid again: the last non-zero sigma for shift 3 is
    shift(shift(0.001)) = 0.00892857 (timestep 8.928572), not shift(0.001) = 0.002994 (reference section 1.4)."""
    sigmas = flow_sigmas(28, shift=3.0)
    assert sigmas[-2].item() == pytest.approx(0.00892857, abs=1e-8)
    assert flow_model_timesteps(sigmas[:-1])[-1].item() == pytest.approx(8.928572, abs=1e-5)
    assert sigmas[-2].item() == pytest.approx(shift_sigmas(shift_sigmas(0.001, 3.0), 3.0), rel=1e-6)
    single = flow_sigmas(28, shift=3.0, mode="single_shift")
    assert single[-2].item() == pytest.approx(shift_sigmas(0.001, 3.0), rel=1e-6)  # 0.002994
    assert sigmas[:3].tolist() == pytest.approx([1.0, 0.98738062, 0.97410774], abs=1e-7)


@pytest.mark.parametrize("key", sorted(GOLDEN["flow_match_euler_dynamic"]))
def test_dynamic_shift_grid_equals_diffusers(key):
    mu, ref = _parse(key)["mu"], GOLDEN["flow_match_euler_dynamic"][key]
    torch.testing.assert_close(flow_sigmas(28, mu=mu), torch.tensor(ref["sigmas"]), atol=1e-7, rtol=0)


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_dynamic_shift_with_mu_log_s_equals_static_shift(shift):
    grid = torch.linspace(1.0, 1e-3, 50, dtype=torch.float64)
    torch.testing.assert_close(time_shift(grid, math.log(shift)), shift_sigmas(grid, shift), atol=1e-12, rtol=0)
    for mode in ("single_shift", "wan"):
        torch.testing.assert_close(flow_sigmas(28, mu=math.log(shift), mode=mode), flow_sigmas(28, shift=shift, mode=mode),
                                   atol=1e-7, rtol=0)


def test_linear_time_shift_and_calculate_shift():
    assert time_shift(0.5, 2.0, "linear") == pytest.approx(2.0 / 3.0)
    # mu for 256 / 1024 / 4096 patch tokens: e^mu = 1.6487 / 1.8776 / 3.1582 (reference 1.3)
    for seq_len, expected in ((256, 1.6487), (1024, 1.8776), (4096, 3.1582)):
        assert math.exp(calculate_shift(seq_len)) == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="shift_type"):
        time_shift(0.5, 1.0, "cubic")


@pytest.mark.parametrize("key", sorted(GOLDEN["unipc_flow"]))
def test_unipc_flow_grid_and_integer_timesteps_equal_diffusers(key):
    shift, ref = _parse(key)["flow_shift"], GOLDEN["unipc_flow"][key]
    sigmas = flow_sigmas(50, shift=shift, mode="unipc_diffusers")
    torch.testing.assert_close(sigmas, torch.tensor(ref["sigmas"]), atol=1e-7, rtol=0)
    timesteps = flow_model_timesteps(sigmas[:-1], integer=True)
    assert timesteps.dtype == torch.int64 and timesteps.tolist() == ref["timesteps"]


def test_wan_grid_differs_from_diffusers_unipc_grid():
    """Wan2.1 (sigma_max 0.999) vs diffusers UniPC flow (1 - 1e-6): values from the reference, shift 5, 50 steps."""
    wan = flow_sigmas(50, shift=5.0, mode="wan")
    assert wan[:3].tolist() == pytest.approx([0.999800, 0.995732, 0.991530], abs=1e-6)
    assert wan[-2].item() == pytest.approx(0.092507, abs=1e-6)
    diffusers = flow_sigmas(50, shift=5.0, mode="unipc_diffusers")
    assert diffusers[:3].tolist() == pytest.approx([0.999999, 0.995939, 0.991744], abs=1e-6)
    assert (wan - diffusers).abs().max().item() == pytest.approx(4.3e-3, abs=1e-4)


def test_shift_properties_and_errors():
    grid = torch.linspace(0, 1, 101)
    assert torch.equal(shift_sigmas(grid, 1.0), grid)
    shifted = shift_sigmas(grid, 3.0)
    assert bool((shifted[1:] > shifted[:-1]).all()) and bool((shifted >= grid).all())
    with pytest.raises(ValueError, match="shift"):
        shift_sigmas(grid, 0.0)
    with pytest.raises(ValueError, match="mode"):
        flow_sigmas(10, mode="karras")
    with pytest.raises(ValueError, match="num_steps"):
        flow_sigmas(0)


def test_vp_schedules():
    linear = vp_alphas_cumprod("linear")
    betas = torch.linspace(1e-4, 0.02, 1000)
    torch.testing.assert_close(linear, torch.cumprod(1 - betas, 0))
    cosine = vp_alphas_cumprod("cosine")
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    assert cosine[499].item() == pytest.approx(f(500 / 1000) / f(0), rel=1e-4)
    assert bool((cosine[1:] < cosine[:-1]).all()) and 0 < cosine[-1].item() < 1e-3
    with pytest.raises(ValueError, match="VP schedule"):
        vp_alphas_cumprod("sigmoid")


def test_logit_normal_sigmas_have_the_right_logit_moments():
    g = torch.Generator().manual_seed(0)
    s = sample_flow_sigmas(40000, scheme="logit_normal", logit_mean=0.5, logit_std=0.8, generator=g)
    logits = torch.log(s / (1 - s))
    assert logits.mean().item() == pytest.approx(0.5, abs=0.02)
    assert logits.std().item() == pytest.approx(0.8, abs=0.02)
    shifted = sample_flow_sigmas(8, scheme="logit_normal", shift=3.0, generator=torch.Generator().manual_seed(1))
    plain = sample_flow_sigmas(8, scheme="logit_normal", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(shifted, shift_sigmas(plain, 3.0))


def test_mode_and_uniform_sigmas():
    u = torch.rand(1000, generator=torch.Generator().manual_seed(2))
    mode = sample_flow_sigmas(1000, scheme="mode", mode_scale=1.29, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(mode, 1 - u - 1.29 * (torch.cos(math.pi * u / 2) ** 2 - 1 + u))
    uniform = sample_flow_sigmas(1000, scheme="uniform", generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(uniform, u)
    with pytest.raises(ValueError, match="timestep sampling"):
        sample_flow_sigmas(4, scheme="beta")


def test_loss_weights():
    s = torch.tensor([0.5, 0.1, 0.9])
    assert flow_loss_weight(s, "cosmap").tolist() == pytest.approx([1.2732, 0.7764, 0.7764], abs=1e-4)
    assert flow_loss_weight(s, "sigma_sqrt").tolist() == pytest.approx([4.0, 100.0, 1 / 0.81], rel=1e-5)
    assert flow_loss_weight(s, "none").tolist() == [1.0, 1.0, 1.0]
