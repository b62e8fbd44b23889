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


def _unit_draws(t, eps):
    """t -> u in [0, 1) as drawn, and the within-stratum offset v_i = B u_i - i of each coordinate."""
    u = (t.double() - eps) / (1 - eps)  # [..., B]
    batch_size = u.shape[-1]
    return u, u * batch_size - torch.arange(batch_size, dtype=u.dtype)


@pytest.mark.parametrize("method", ["low_discrepancy", "stratified"])
@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_stratified_timesteps_put_coordinate_i_in_stratum_i(method, batch_size):
    eps = 1e-3
    generator = torch.Generator().manual_seed(batch_size)
    for _ in range(20):
        t = sample_timesteps(batch_size, eps=eps, method=method, generator=generator)
        assert t.min() >= eps and t.max() < 1
        u, _ = _unit_draws(t, eps)
        assert torch.equal(torch.floor(u * batch_size).long(), torch.arange(batch_size))


def test_low_discrepancy_is_vdm_one_shared_offset_evenly_spaced():
    """VDM's law: every coordinate has the same offset inside its stratum, so the batch is evenly spaced 1/B apart;
    and it is the draw textdiff always made under `antithetic: true` (one uniform, bit for bit)."""
    eps, batch_size = 1e-3, 8
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        t = sample_timesteps(batch_size, eps=eps, method="low_discrepancy", generator=generator)
        _, v = _unit_draws(t, eps)
        torch.testing.assert_close(v, v[:1].expand_as(v), rtol=0, atol=1e-5)
    g = torch.Generator().manual_seed(5)
    u0 = torch.rand((1,), generator=g)
    old = 1e-3 + (1 - 1e-3) * ((u0 / batch_size + torch.arange(batch_size) / batch_size) % 1.0)
    new = sample_timesteps(batch_size, method="low_discrepancy", generator=torch.Generator().manual_seed(5))
    assert torch.equal(new, old)


def test_stratified_is_mdlm_one_independent_uniform_per_stratum():
    """MDLM's law (`_sample_t` with antithetic_sampling): the offsets v_i = B u_i - i are iid U(0, 1): uniform
    marginals, uncorrelated across strata, and (almost surely) not all equal within a batch."""
    eps, batch_size, draws = 1e-3, 4, 20_000
    generator = torch.Generator().manual_seed(2)
    t = torch.stack([sample_timesteps(batch_size, eps=eps, method="stratified", generator=generator)
                     for _ in range(draws)])  # [draws, B]
    _, v = _unit_draws(t, eps)
    assert v.min() >= 0 and v.max() < 1
    for i in range(batch_size):
        mean_se, var_se = 1 / math.sqrt(12 * draws), 1 / math.sqrt(180 * draws)  # sd of U(0,1) mean and variance
        assert abs(v[:, i].mean().item() - 0.5) < 5 * mean_se
        assert abs(v[:, i].var().item() - 1 / 12) < 5 * var_se
        # the marginal CDF: a Kolmogorov-Smirnov distance well inside the 0.1% critical value 1.95 / sqrt(n)
        sorted_v = v[:, i].sort().values
        ks = (sorted_v - torch.arange(1, draws + 1, dtype=v.dtype) / draws).abs().max().item()
        assert ks < 1.95 / math.sqrt(draws)
    correlation = torch.corrcoef(v.T)  # [B, B]
    off_diagonal = correlation[~torch.eye(batch_size, dtype=torch.bool)]
    assert off_diagonal.abs().max().item() < 5 / math.sqrt(draws)
    spread = v.max(dim=1).values - v.min(dim=1).values  # [draws]
    assert (spread > 1e-3).float().mean().item() > 0.99  # low_discrepancy would give exactly 0


@pytest.mark.parametrize("method", ["low_discrepancy", "stratified"])
def test_stratified_pooled_samples_are_uniform(method):
    # a uniformly chosen coordinate is U[eps, 1), so the batch-mean loss stays unbiased
    eps = 1e-3
    batch_size = 4
    generator = torch.Generator().manual_seed(1)
    t = torch.stack([sample_timesteps(batch_size, eps=eps, method=method, generator=generator)
                     for _ in range(5000)])  # [draws, B]
    pooled = t.double().flatten()
    std_err = (1 - eps) / math.sqrt(12 * pooled.numel())  # stratification only shrinks the error
    assert abs(pooled.mean().item() - (1 + eps) / 2) < 5 * std_err
    _, v = _unit_draws(t, eps)  # within a stratum the offset is uniform
    assert abs(v[:, 0].mean().item() - 0.5) < 5 / math.sqrt(12 * v.shape[0])


def test_unknown_timestep_sampler_lists_valid_names():
    with pytest.raises(ValueError, match="uniform, low_discrepancy, stratified"):
        sample_timesteps(4, method="antithetic")


def test_timesteps_reproducible_with_generator():
    a = sample_timesteps(8, generator=torch.Generator().manual_seed(3))
    b = sample_timesteps(8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
