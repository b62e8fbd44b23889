import math

import pytest
import torch

from textdiff.schedules import (
    CosineSchedule,
    LinearSchedule,
    LogLinearSchedule,
    get_masking_schedule,
    sample_timesteps,
)

ALL_SCHEDULES = ["linear", "cosine", "loglinear"]
T_GRID = torch.tensor([0.01, 0.05, 0.2, 0.37, 0.5, 0.8, 0.95, 0.999], dtype=torch.float64)


@pytest.mark.parametrize("name", ALL_SCHEDULES)
def test_alpha_endpoints(name):
    schedule = get_masking_schedule(name)
    zero, one = torch.tensor([0.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    assert schedule.alpha(zero).item() == pytest.approx(1.0, abs=1e-12)
    expected_end = 1e-3 if name == "loglinear" else 0.0  # MDLM loglinear keeps eps clean at t = 1
    assert schedule.alpha(one).item() == pytest.approx(expected_end, abs=1e-12)


@pytest.mark.parametrize("name", ALL_SCHEDULES)
def test_alpha_monotone_and_mask_prob(name):
    schedule = get_masking_schedule(name)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    alpha = schedule.alpha(t)
    assert torch.all(alpha[1:] < alpha[:-1])
    torch.testing.assert_close(schedule.mask_prob(t), 1.0 - alpha, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ALL_SCHEDULES)
def test_alpha_prime_matches_finite_difference(name):
    schedule = get_masking_schedule(name)
    h = 1e-6
    t = T_GRID.clamp(max=1 - 2 * h)
    finite_diff = (schedule.alpha(t + h) - schedule.alpha(t - h)) / (2 * h)
    torch.testing.assert_close(schedule.alpha_prime(t), finite_diff, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ALL_SCHEDULES)
def test_elbo_weight_is_minus_dalpha_over_mask_prob(name):
    # independent of the analytic alpha_prime: finite difference of alpha
    schedule = get_masking_schedule(name)
    h = 1e-6
    t = T_GRID.clamp(max=1 - 2 * h)
    finite_diff = (schedule.alpha(t + h) - schedule.alpha(t - h)) / (2 * h)
    expected = -finite_diff / (1.0 - schedule.alpha(t))
    torch.testing.assert_close(schedule.elbo_weight(t), expected, rtol=1e-6, atol=0)


def test_linear_weight_is_exactly_one_over_t():
    t = torch.rand(1000) * 0.999 + 1e-3
    assert torch.equal(LinearSchedule().elbo_weight(t), 1.0 / t)
    assert torch.equal(LinearSchedule().mask_prob(t), t)


def test_loglinear_is_mdlm():
    eps = 1e-3
    schedule = LogLinearSchedule(eps=eps)
    t = T_GRID
    sigma = -torch.log1p(-(1 - eps) * t)  # MDLM total noise
    torch.testing.assert_close(schedule.mask_prob(t), -torch.expm1(-sigma), rtol=1e-12, atol=1e-12)
    dsigma = (1 - eps) / (1 - (1 - eps) * t)
    torch.testing.assert_close(schedule.elbo_weight(t), dsigma / torch.expm1(sigma), rtol=1e-9, atol=0)
    torch.testing.assert_close(schedule.elbo_weight(t), 1.0 / t, rtol=1e-12, atol=0)


def test_cosine_weight_closed_form():
    schedule = CosineSchedule()
    for t in [0.003, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999]:
        expected = (math.pi / 2) * math.sin(math.pi * t / 2) / (1 - math.cos(math.pi * t / 2))
        got = schedule.elbo_weight(torch.tensor([t], dtype=torch.float64)).item()
        assert got == pytest.approx(expected, rel=1e-9)
        mask_prob = schedule.mask_prob(torch.tensor([t], dtype=torch.float64)).item()
        assert mask_prob == pytest.approx(1 - math.cos(math.pi * t / 2), rel=1e-9)


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(ValueError, match="cosine.*linear.*loglinear"):
        get_masking_schedule("geometric")


def test_uniform_timesteps_range_and_mean():
    eps = 1e-3
    n = 200_000
    t = sample_timesteps(n, eps=eps, generator=torch.Generator().manual_seed(0))
    assert t.shape == (n,)
    assert t.min() >= eps and t.max() < 1
    std_err = (1 - eps) / math.sqrt(12 * n)
    assert abs(t.double().mean().item() - (1 + eps) / 2) < 5 * std_err


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_antithetic_timesteps_are_stratified(batch_size):
    eps = 1e-3
    generator = torch.Generator().manual_seed(batch_size)
    for _ in range(20):
        t = sample_timesteps(batch_size, eps=eps, antithetic=True, generator=generator).double()
        assert t.min() >= eps and t.max() < 1
        s = torch.sort((t - eps) / (1 - eps)).values  # back to [0, 1)
        # exactly one sample per stratum [k/B, (k+1)/B) and evenly spaced by 1/B
        strata = torch.floor(s * batch_size).long()
        assert torch.equal(strata, torch.arange(batch_size))
        if batch_size > 1:
            torch.testing.assert_close(s.diff(), torch.full((batch_size - 1,), 1 / batch_size, dtype=s.dtype))


def test_antithetic_pooled_samples_are_uniform():
    # MDLM's formula puts t_i in stratum i; a uniformly chosen coordinate is U[eps, 1), so the
    # batch-mean loss stays unbiased
    eps = 1e-3
    batch_size = 4
    generator = torch.Generator().manual_seed(1)
    t = torch.stack(
        [sample_timesteps(batch_size, eps=eps, antithetic=True, generator=generator) for _ in range(5000)]
    )
    s = (t.double() - eps) / (1 - eps)  # [draws, B]
    assert torch.equal(torch.floor(s * batch_size).long(), torch.arange(batch_size).expand_as(s))
    pooled = t.double().flatten()
    std_err = (1 - eps) / math.sqrt(12 * pooled.numel())  # stratification only shrinks the error
    assert abs(pooled.mean().item() - (1 + eps) / 2) < 5 * std_err
    # within a stratum the offset u0 is uniform
    within = s[:, 0] * batch_size
    assert abs(within.mean().item() - 0.5) < 5 / math.sqrt(12 * within.numel())


def test_timesteps_reproducible_with_generator():
    a = sample_timesteps(8, generator=torch.Generator().manual_seed(3))
    b = sample_timesteps(8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
