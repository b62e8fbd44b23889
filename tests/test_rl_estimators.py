"""The coupled and d1 log-likelihood estimators: mask geometry, seeding, hand-worked combination, statistics."""

import math

import pytest
import torch
from torch import nn

from textdiff import TextDiffConfig, TextDiffModel
from textdiff.rl.estimators import (
    CoupledMasks,
    combine_coupled,
    coupled_estimate,
    coupled_masks,
    coupled_views,
    d1_estimate,
    row_mask_seeds,
    single_mask_estimate,
    view_log_probs,
)

MASK = 31


class Sharpened(nn.Module):
    """A fixed random bidirectional model whose logits are scaled up so predictions depend on context."""

    def __init__(self, scale: float = 6.0):
        super().__init__()
        torch.manual_seed(0)
        self.model = TextDiffModel(TextDiffConfig(
            vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=64, max_position_embeddings=64, mask_token_id=MASK)).eval()
        self.scale = scale

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        out = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids)
        out.logits = out.logits * self.scale
        return out


def _batch(B=5, P=6, C=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, MASK, (B, P + C), generator=g)
    attn = torch.ones_like(ids)
    attn[1, :2] = 0  # a left-padded prompt
    return ids, attn


# ---------------------------------------------------------------------------------------------- masks and seeds
def test_complementary_views_are_disjoint_cover_the_completion_and_never_touch_the_prompt():
    ids, attn = _batch(B=16, P=7, C=12)
    seeds = row_mask_seeds(ids, attn, rollout_id=3, iteration=1)
    masks = coupled_masks(seeds, 12)
    views = coupled_views(ids, 12, MASK, masks)  # [B, 3, L]
    assert views.shape == (16, 3, 19)
    masked = views == MASK  # [B, 3, L]
    assert not masked[:, :, :7].any()  # prompt never masked, in any view
    assert torch.equal(views[:, :, :7], ids[:, None, :7].expand(-1, 3, -1))
    v0, v1, v2 = masked[:, 0, 7:], masked[:, 1, 7:], masked[:, 2, 7:]
    assert v0.all()  # the all-masked view
    assert not (v1 & v2).any()  # disjoint
    assert (v1 | v2).all()  # every completion token is masked in exactly one of the pair
    assert torch.equal(v1, masks.first)
    assert ((masks.t >= 0.2) & (masks.t <= 0.8)).all()
    # unmasked positions keep their tokens
    assert torch.equal(views[:, 1, 7:][~v1], ids[:, 7:][~v1])


def test_masks_depend_only_on_the_row_not_on_batch_composition_and_leave_the_global_rng_alone():
    ids, attn = _batch(B=64, P=5, C=9)
    rng_before = torch.random.get_rng_state()
    seeds = row_mask_seeds(ids, attn, rollout_id=7, iteration=0)
    full = coupled_masks(seeds, 9)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    perm = torch.randperm(64)
    for row in (0, 1, 33, 63):
        alone = coupled_masks(row_mask_seeds(ids[row:row + 1], attn[row:row + 1], rollout_id=7, iteration=0), 9)
        assert torch.equal(alone.first[0], full.first[row]) and alone.t[0] == full.t[row]
    shuffled = coupled_masks(row_mask_seeds(ids[perm], attn[perm], rollout_id=7, iteration=0), 9)
    assert torch.equal(shuffled.first, full.first[perm]) and torch.equal(shuffled.t, full.t[perm])
    # padding does not enter the seed; the rollout id and the inner iteration do
    repadded = torch.cat([torch.zeros(64, 3, dtype=torch.long), ids], 1)
    reattn = torch.cat([torch.zeros(64, 3, dtype=torch.long), attn], 1)
    assert row_mask_seeds(repadded, reattn, rollout_id=7, iteration=0) == seeds
    assert row_mask_seeds(ids, attn, rollout_id=7, iteration=1) != seeds
    assert row_mask_seeds(ids, attn, rollout_id=8, iteration=0) != seeds


def test_estimates_of_a_row_are_identical_alone_and_in_a_batch():
    model = Sharpened()
    ids, attn = _batch(B=12, P=6, C=8)
    seeds = row_mask_seeds(ids, attn, rollout_id=0, iteration=0)
    with torch.no_grad():
        full = coupled_estimate(model, ids, attn, 8, mask_token_id=MASK, seeds=seeds)
        for row in (0, 1, 11):
            alone = coupled_estimate(model, ids[row:row + 1], attn[row:row + 1], 8, mask_token_id=MASK,
                                     seeds=seeds[row:row + 1])
            torch.testing.assert_close(alone.logps[0], full.logps[row], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(alone.entropies[0], full.entropies[row], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- hand-worked math
def test_combine_coupled_hand_worked():
    masks = CoupledMasks(first=torch.tensor([[True, False, True]]), t=torch.tensor([0.25]))
    lp0 = torch.tensor([-1.0, -2.0, -3.0])
    lp1 = torch.tensor([-0.5, -9.0, -0.25])  # used where first (t = 0.25: weight 4)
    lp2 = torch.tensor([-9.0, -0.75, -9.0])  # used on the complement (weight 1 / 0.75)
    with_v0 = combine_coupled(torch.stack([lp0, lp1, lp2])[None], masks)
    expected = torch.tensor([(-1.0 + -2.0) / 2, (-2.0 + -1.0) / 2, (-3.0 + -1.0) / 2])
    torch.testing.assert_close(with_v0[0], expected)
    without = combine_coupled(torch.stack([lp1, lp2])[None], masks, all_masked_view=False)
    torch.testing.assert_close(without[0], torch.tensor([-1.0, -0.5, -0.5]))
    with pytest.raises(ValueError, match=r"\[B, 3, C\]"):
        combine_coupled(torch.stack([lp1, lp2])[None], masks)


def test_view_log_probs_match_a_direct_subs_computation_with_and_without_logit_shift():
    """SUBS (MDLM): the log-probs are a log-softmax over the vocabulary without the [MASK] column (the last id)."""
    model = Sharpened()
    ids, attn = _batch(B=3, P=4, C=5)
    views = ids[:, None].clone()
    views[:, 0, 5] = MASK
    with torch.no_grad():
        logits = model(views[:, 0], attention_mask=attn,
                       position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits[..., :MASK].log_softmax(-1)
        for shift in (False, True):
            lp, ent = view_log_probs(model, views, ids[:, 4:], attn, 5, mask_token_id=MASK, logit_shift=shift)
            for b in range(3):
                for i in range(5):
                    src = logits[b, 4 + i - (1 if shift else 0)]
                    assert math.isclose(lp[b, 0, i].item(), src[ids[b, 4 + i]].item(), rel_tol=1e-5, abs_tol=1e-5)
                    assert math.isclose(ent[b, 0, i].item(), -(src.exp() * src).sum().item(), rel_tol=1e-4)


class LovesMask(Sharpened):
    """The same model with an extra `boost` on the [MASK] logit: under SUBS it scores every token identically."""

    def __init__(self, boost: float):
        super().__init__()
        self.boost = boost

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        out = super().forward(input_ids, attention_mask, position_ids)
        out.logits[..., MASK] += self.boost
        return out


@pytest.mark.parametrize("estimator", ["coupled", "d1"])
def test_estimates_are_subs_the_mask_logit_never_enters(estimator):
    ids, attn = _batch(B=4, P=6, C=8)
    seeds = row_mask_seeds(ids, attn, rollout_id=0, iteration=0)
    run = coupled_estimate if estimator == "coupled" else d1_estimate
    with torch.no_grad():
        base = run(LovesMask(0.0), ids, attn, 8, mask_token_id=MASK, seeds=seeds)
        for boost in (-20.0, 10.0):  # [MASK] would take ~all of a full softmax at +10
            moved = run(LovesMask(boost), ids, attn, 8, mask_token_id=MASK, seeds=seeds)
            torch.testing.assert_close(moved.logps, base.logps, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(moved.entropies, base.entropies, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(base.logps).all() and torch.isfinite(base.entropies).all()


def test_a_mask_target_is_a_clear_error():
    ids, attn = _batch(B=2, P=3, C=4)
    ids[0, -1] = MASK
    with pytest.raises(ValueError, match=r"\[MASK\] id"):
        coupled_estimate(Sharpened(), ids, attn, 4, mask_token_id=MASK, seeds=[1, 2])


def test_d1_masks_all_the_completion_and_only_real_prompt_tokens():
    ids, attn = _batch(B=4, P=6, C=5)
    seen = []

    class Spy(Sharpened):
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            seen.append(input_ids.clone())
            return super().forward(input_ids, attention_mask, position_ids)

    model = Spy()
    with torch.no_grad():
        a = d1_estimate(model, ids, attn, 5, mask_token_id=MASK, seeds=[1, 2, 3, 4], p_mask_prompt=0.0)
        b = d1_estimate(model, ids, attn, 5, mask_token_id=MASK, seeds=[5, 6, 7, 8], p_mask_prompt=0.0)
    torch.testing.assert_close(a.logps, b.logps, rtol=0, atol=0)  # p = 0: deterministic, seeds irrelevant
    assert torch.equal(seen[0][:, :6], ids[:, :6]) and (seen[0][:, 6:] == MASK).all()
    long = torch.randint(0, MASK, (1, 60))
    with torch.no_grad():
        d1_estimate(model, long, None, 1, mask_token_id=MASK, seeds=[9], p_mask_prompt=0.5)
    prompt_view = seen[-1][0, :59]
    assert 10 < int((prompt_view == MASK).sum()) < 50  # about half of the prompt masked
    with torch.no_grad():
        d1_estimate(model, ids, attn, 5, mask_token_id=MASK, seeds=[1, 2, 3, 4], p_mask_prompt=0.9)
    assert not (seen[-1][1, :2] == MASK).any()  # prompt padding is never masked


def test_bad_inputs_raise_clear_errors():
    ids, attn = _batch(B=2, P=3, C=4)
    with pytest.raises(ValueError, match="one mask seed per row"):
        coupled_estimate(Sharpened(), ids, attn, 4, mask_token_id=MASK, seeds=[1])
    with pytest.raises(ValueError, match="t_min"):
        coupled_masks([1], 4, t_min=0.9, t_max=0.1)
    with pytest.raises(ValueError, match="completion_length"):
        coupled_estimate(Sharpened(), ids, attn, 99, mask_token_id=MASK, seeds=[1, 2])
    with pytest.raises(ValueError, match="p_mask_prompt"):
        d1_estimate(Sharpened(), ids, attn, 4, mask_token_id=MASK, seeds=[1, 2], p_mask_prompt=1.5)


# ---------------------------------------------------------------------------------------------- statistics
def test_coupled_is_unbiased_against_single_masks_and_halves_the_variance_at_equal_passes():
    """N draws on one fixed (prompt, completion): the coupled pair (2 passes, no all-masked view) against the
    single-mask ELBO term [i in M] logp / t with t ~ U(0.2, 0.8) (1 pass), summed over the completion."""
    model = Sharpened()
    N, P, C = 1500, 8, 24
    row = torch.randint(0, MASK, (1, P + C), generator=torch.Generator().manual_seed(1))
    ids = row.expand(N, -1)
    with torch.no_grad():
        coupled = coupled_estimate(model, ids, None, C, mask_token_id=MASK, seeds=list(range(N)),
                                   all_masked_view=False).logps.sum(1)  # [N], 2 passes each
        single_masks = coupled_masks(list(range(N, 3 * N)), C)  # 2N independent draws, 1 pass each
        views = ids.repeat(2, 1).clone()
        views[:, P:] = torch.where(single_masks.first, MASK, views[:, P:])
        lp, _ = view_log_probs(model, views[:, None], ids.repeat(2, 1)[:, P:], None, C, mask_token_id=MASK)
        single = single_mask_estimate(lp[:, 0], single_masks.first, single_masks.t).sum(1)  # [2N]
    # coupled / 2 (as returned) estimates the same expectation as one single mask
    se = math.sqrt(coupled.var().item() / N + single.var().item() / (2 * N))
    assert abs(coupled.mean().item() - single.mean().item()) < 3 * se
    two_independent = (single[:N] + single[N:]) / 2  # 2 passes, like the pair
    ratio = coupled.var().item() / two_independent.var().item()
    assert ratio <= 0.5, ratio
    # coverage: the pair scores every token, a single mask leaves about half unscored
    assert single_masks.first.float().mean().item() == pytest.approx(0.5, abs=0.03)
