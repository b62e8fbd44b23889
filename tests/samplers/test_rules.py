"""Step rules beyond LLaDA's: Dream confidence scores, Fast-dLLM threshold / factor, MDLM ancestral.

Hand-built logits pin down which positions each rule commits; a stand-in model with known marginals checks the
ancestral sampler's token distribution and reveal counts; plain reference loops check the dynamic rules.
"""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from textdiff.samplers import (
    SAMPLERS,
    AncestralSampler,
    ConfidenceSampler,
    FactorSampler,
    ThresholdSampler,
    build_sampler,
    generate,
)
from textdiff.samplers.fastdllm import factor_transfer

VOCAB, MASK = 8, 7  # hand-built cases: tokens 0..6 and [MASK] = 7
CHI2_CRITICAL_1E3 = {2: 13.816, 5: 20.515}  # chi2.ppf(1 - 1e-3, df)


def logits_from_probs(probs: torch.Tensor, mask_logit: float = 5.0) -> torch.Tensor:
    """[..., VOCAB] logits whose softmax over tokens 0..6 is `probs` [..., 7]; the [MASK] logit is large, so a rule
    that forgot to forbid [MASK] would predict it and score with the wrong probabilities."""
    return torch.cat([probs.log(), torch.full((*probs.shape[:-1], 1), mask_logit)], dim=-1)


def peaked(token: int, p: float) -> torch.Tensor:
    """[7] probabilities: p on `token`, the rest spread evenly."""
    probs = torch.full((VOCAB - 1,), (1 - p) / (VOCAB - 2), dtype=torch.float64)
    probs[token] = p
    return probs


def step(sampler, probs_rows, sample, block_start, block_end, num_transfer=None):
    logits = logits_from_probs(torch.stack([torch.stack(row) for row in probs_rows]))
    return sampler.step(logits, torch.tensor(1.0), sample, block_start=block_start, block_end=block_end,
                        num_transfer=num_transfer).prev_sample


def committed(before: torch.Tensor, after: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(row).flatten().tolist() for row in before != after]


# ---------------------------------------------------------------------------------------------- Fast-dLLM threshold


def test_threshold_commits_exactly_the_confident_positions():
    sampler = ThresholdSampler(MASK, threshold=0.9)
    sample = torch.tensor([[2, MASK, MASK, MASK, MASK, MASK],
                           [2, MASK, MASK, MASK, 5, MASK]])
    rows = [
        # pos 0 unmasked, block [1, 5), pos 5 outside the block (confident, must stay masked)
        [peaked(2, 0.99), peaked(3, 0.95), peaked(1, 0.5), peaked(0, 0.92), peaked(4, 0.89), peaked(6, 0.99)],
        # nothing reaches 0.9: only the most confident masked position (pos 4 is unmasked, not a candidate)
        [peaked(2, 0.99), peaked(3, 0.6), peaked(1, 0.8), peaked(0, 0.7), peaked(4, 0.99), peaked(6, 0.99)],
    ]
    out = step(sampler, rows, sample, 1, 5)
    assert committed(sample, out) == [[1, 3], [2]]
    assert out[0, 1] == 3 and out[0, 3] == 0 and out[1, 2] == 1


def test_threshold_extremes_set_the_number_of_forward_passes(tiny_model_factory):
    model = tiny_model_factory()
    prompt = torch.randint(0, 66, (1, 5))
    one_per_step = generate(model, prompt, gen_length=8, steps=2, block_length=4, sampler="threshold", threshold=1.0)
    whole_block = generate(model, prompt, gen_length=8, steps=2, block_length=4, sampler="threshold", threshold=0.0)
    assert one_per_step.nfe == 8  # gen_length
    assert whole_block.nfe == 2  # number of blocks
    for out in (one_per_step, whole_block):
        assert not (out.sequences == 66).any()


# ---------------------------------------------------------------------------------------------- Fast-dLLM factor


@pytest.mark.parametrize("confidence, factor, accepted", [
    ([0.99, 0.95, 0.9, 0.5], 1.0, 3),  # n=2: 3 * 0.05 = 0.15, n=3: 4 * 0.1 = 0.4, n=4: 5 * 0.5 = 2.5 > 1
    ([0.99, 0.95, 0.9, 0.5], 0.1, 1),  # n=2: 0.15 > 0.1
    ([0.99, 0.95, 0.9, 0.5], 3.0, 4),  # n=4: 2.5 <= 3
    ([0.2, 0.1], 1.0, 1),  # rank 1 always accepted
    ([0.99, 0.95, 0.5], 1.0, 2),  # the last rank fails: rejected (Fast-dLLM's loop would accept it)
])
def test_factor_accepts_the_ranks_of_the_stated_rule(confidence, factor, accepted):
    order = torch.randperm(len(confidence))
    conf = torch.tensor(confidence, dtype=torch.float64)[order]
    padded = torch.cat([conf, torch.tensor([-torch.inf])])[None]  # an unmasked position (-inf) is never accepted
    transfer = factor_transfer(padded, factor)[0]
    assert transfer[:-1].sum() == accepted and not transfer[-1]
    assert set(conf[transfer[:-1]].tolist()) == set(confidence[:accepted])


def test_factor_sampler_commits_the_most_confident_prefix():
    sampler = FactorSampler(MASK, factor=1.0)
    sample = torch.tensor([[MASK, MASK, MASK, MASK, 4, MASK]])
    rows = [[peaked(0, 0.5), peaked(1, 0.99), peaked(2, 0.9), peaked(3, 0.95), peaked(4, 0.999), peaked(5, 0.999)]]
    out = step(sampler, rows, sample, 0, 5)
    assert committed(sample, out) == [[1, 2, 3]]
    assert out[0, 1:4].tolist() == [1, 2, 3]


# ---------------------------------------------------------------------------------------------- Dream scores

# three masked positions the scores rank differently (probabilities over tokens 0..6):
#   A: top-1 0.50, margin 0.05, entropy 0.94  -> best top-1
#   B: top-1 0.45, margin 0.36, entropy 1.31  -> best margin
#   C: top-1 0.49, margin 0.00, entropy 0.81  -> best (lowest) entropy
A = torch.tensor([0.5, 0.45, 0.01, 0.01, 0.01, 0.01, 0.01], dtype=torch.float64)
B = torch.tensor([0.55 / 6] * 3 + [0.45] + [0.55 / 6] * 3, dtype=torch.float64)
C = torch.tensor([0.004] * 5 + [0.49, 0.49], dtype=torch.float64)


def dream_case(batch: int = 1):
    """Positions 0-2 = A, B, C masked; 3 unmasked and one-hot-ish; 4 masked, one-hot-ish, outside block [0, 4)."""
    sample = torch.tensor([[MASK, MASK, MASK, 6, MASK]]).expand(batch, -1).clone()
    rows = [[A, B, C, peaked(6, 0.999), peaked(2, 0.999)]] * batch
    return sample, rows


@pytest.mark.parametrize("score, first, second", [
    ("maskgit_plus", 0, 2),
    ("topk_margin", 1, 0),
    ("entropy", 2, 0),
])
def test_confidence_scores_rank_positions_differently(score, first, second):
    sampler = ConfidenceSampler(MASK, score=score)
    sample, rows = dream_case()
    one = step(sampler, rows, sample, 0, 4, num_transfer=torch.tensor([1]))
    two = step(sampler, rows, sample, 0, 4, num_transfer=torch.tensor([2]))
    assert committed(sample, one) == [[first]]
    assert committed(sample, two) == [sorted([first, second])]
    assert one[0, first] == [0, 3, 5][first]  # the argmax token (C ties 5 and 6: argmax takes the first)


@pytest.mark.parametrize("temperature, winner", [(1.0, 0), (0.1, 1)])
def test_scores_use_the_tempered_probabilities(temperature, winner):
    """X = two tokens at 0.5 (entropy ln 2) beats Y = 0.6 + a flat tail (entropy 1.39) at temperature 1; at 0.1
    Y sharpens to nearly one-hot while X stays at ln 2, so Y wins."""
    x = torch.tensor([0.5, 0.5 - 5e-4] + [1e-4] * 5, dtype=torch.float64)
    y = torch.tensor([0.6] + [0.4 / 6] * 6, dtype=torch.float64)
    sampler = ConfidenceSampler(MASK, score="entropy", temperature=temperature, generator=torch.Generator().manual_seed(0))
    sample = torch.tensor([[MASK, MASK]])
    out = step(sampler, [[x, y]], sample, 0, 2, num_transfer=torch.tensor([1]))
    assert committed(sample, out) == [[winner]]


def test_alg_temp_draws_positions_from_softmax_of_confidence():
    alg_temp, n = 0.05, 3000
    conf = torch.tensor([0.5, 0.45, 0.49], dtype=torch.float64)  # top-1 probabilities of A, B, C
    w = torch.softmax(conf / alg_temp, dim=0)
    sample, rows = dream_case(batch=n)
    sampler = ConfidenceSampler(MASK, score="maskgit_plus", alg_temp=alg_temp, generator=torch.Generator().manual_seed(0))

    # k = 1: position j with probability w_j
    out = step(sampler, rows, sample, 0, 4, num_transfer=torch.ones(n, dtype=torch.long))
    picked = (out != sample)[:, :3]
    assert (picked.sum(1) == 1).all() and (out[:, 3:] == sample[:, 3:]).all()
    assert chi_square(picked.sum(0).double(), n * w) < CHI2_CRITICAL_1E3[2]

    # k = 2 without replacement: j is left out when the two draws are the others, in either order
    out = step(sampler, rows, sample, 0, 4, num_transfer=torch.full((n,), 2))
    left_out = (out == sample)[:, :3]
    assert (left_out.sum(1) == 1).all()
    p_left_out = torch.stack([
        sum(w[i] * w[m] / (1 - w[i]) for i in range(3) for m in range(3) if len({i, m, j}) == 3) for j in range(3)
    ])
    assert chi_square(left_out.sum(0).double(), n * p_left_out) < CHI2_CRITICAL_1E3[2]


def chi_square(observed: torch.Tensor, expected: torch.Tensor) -> float:
    return float(((observed - expected) ** 2 / expected).sum())


# ---------------------------------------------------------------------------------------------- MDLM ancestral


class FixedMarginals(torch.nn.Module):
    """A denoiser with known output: logits log p at every position whatever the input, [MASK] logit high."""

    def __init__(self, probs: torch.Tensor, context: int = 128):
        super().__init__()
        mask_id = len(probs)
        self.log_probs = torch.cat([probs.log(), torch.tensor([3.0])]).float()  # [V]
        self.config = SimpleNamespace(mask_token_id=mask_id, max_position_embeddings=context, eos_token_id=None,
                                      logit_shift=False)

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.log_probs.expand(*input_ids.shape, -1).clone())  # [B, L, V]


MARGINALS = torch.tensor([0.3, 0.25, 0.2, 0.1, 0.1, 0.05], dtype=torch.float64)


def expected_reveal_probability(schedule: str, i: int, n: int) -> float:
    """Step i of n moves t = 1 - i/n to s = t - 1/n: (alpha_s - alpha_t) / (1 - alpha_t), written out by hand."""
    t, s = 1 - i / n, 1 - (i + 1) / n
    alpha = {"linear": lambda u: 1 - u, "cosine": lambda u: math.cos(math.pi * u / 2)}[schedule]
    return (alpha(s) - alpha(t)) / (1 - alpha(t))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ancestral_matches_marginals_and_reveal_rates(schedule):
    model = FixedMarginals(MARGINALS)
    mask_id, rows, gen_length, block_length, per_block = model.config.mask_token_id, 32, 64, 16, 4
    prompt = torch.zeros(rows, 1, dtype=torch.long)
    counts = torch.zeros(len(MARGINALS))
    revealed = torch.zeros(per_block)
    expected, variance = torch.zeros(per_block), torch.zeros(per_block)
    for seed in range(3):
        masked_before = {}

        def record(block, step_number, canvas, masked_before=masked_before):
            lo = 1 + block * block_length
            still = (canvas[:, lo:lo + block_length] == mask_id).sum(1).double()  # [rows]
            before = masked_before.get(block, torch.full((rows,), float(block_length)))
            i = step_number - 1
            p = expected_reveal_probability(schedule, i, per_block)
            revealed[i] += (before - still).sum()
            expected[i] += (before * p).sum()
            variance[i] += (before * p * (1 - p)).sum()
            masked_before[block] = still
            if i == per_block - 1:
                assert (still == 0).all()  # the last step finishes the block

        out = generate(model, prompt, gen_length=gen_length, steps=gen_length // block_length * per_block,
                       block_length=block_length, sampler="ancestral", schedule=schedule, temperature=1.0,
                       generator=torch.Generator().manual_seed(seed), callback=record)
        generated = out.sequences[:, 1:]
        assert not (generated == mask_id).any()
        counts += torch.bincount(generated.flatten(), minlength=len(MARGINALS)).double()
        assert out.nfe == gen_length // block_length * per_block

    assert chi_square(counts, counts.sum() * MARGINALS) < CHI2_CRITICAL_1E3[5]
    sigma = variance.sqrt()
    assert ((revealed - expected).abs()[:-1] <= 4 * sigma[:-1]).all(), (revealed, expected, sigma)
    assert revealed[-1] == expected[-1]  # p = 1 at the last step


def test_ancestral_reveal_probability_is_one_at_the_last_step():
    sampler = AncestralSampler(MASK)
    sampler.set_timesteps(3)
    probabilities = [float(sampler.reveal_probability(t)) for t in sampler.timesteps]
    assert probabilities == pytest.approx([1 / 3, 1 / 2, 1.0])
    assert probabilities[-1] == 1.0


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_ancestral_step_forbids_mask_and_finishes_at_the_last_step(temperature):
    sampler = AncestralSampler(MASK, temperature=temperature, generator=torch.Generator().manual_seed(0))
    sampler.set_timesteps(2)
    sample = torch.tensor([[1, MASK, MASK, MASK, MASK, MASK]])
    logits = logits_from_probs(peaked(4, 0.5).expand(1, 6, -1), mask_logit=20.0)  # [MASK] would win everywhere
    out = sampler.step(logits, sampler.timesteps[-1], sample, block_start=1, block_end=5).prev_sample
    assert (out[0, 1:5] != MASK).all() and out[0, 5] == MASK and out[0, 0] == 1
    if temperature == 0:
        assert (out[0, 1:5] == 4).all()


def test_ancestral_greedy_takes_the_argmax():
    model = FixedMarginals(MARGINALS)
    out = generate(model, torch.zeros(2, 1, dtype=torch.long), gen_length=8, steps=4, block_length=8,
                   sampler="ancestral", generator=torch.Generator().manual_seed(0))
    assert (out.sequences[:, 1:] == 0).all()


# ---------------------------------------------------------------------------------------------- reference loops


@torch.no_grad()
def reference_fastdllm_greedy(model, prompt, gen_length, block_length, mask_id, accepted_count):
    """Fast-dLLM's loop at temperature 0, written as plain loops: per block, step until no [MASK]; per row, sort the
    block's masked confidences and commit the `accepted_count(sorted confidences)` most confident."""
    x = torch.cat([prompt, torch.full((prompt.shape[0], gen_length), mask_id)], dim=1)
    P, nfe = prompt.shape[1], 0
    for b in range(gen_length // block_length):
        lo, hi = P + b * block_length, P + (b + 1) * block_length
        while (x[:, lo:hi] == mask_id).any():
            logits = model(x).logits.double()
            logits[..., mask_id] = -torch.inf
            probs, nfe = F.softmax(logits, dim=-1), nfe + 1
            for r in range(x.shape[0]):
                candidates = []
                for i in range(lo, hi):
                    if x[r, i] == mask_id:
                        tok = int(logits[r, i].argmax())
                        candidates.append((float(probs[r, i, tok]), i, tok))
                candidates.sort(key=lambda c: -c[0])
                if candidates:
                    for _, i, tok in candidates[:accepted_count([c[0] for c in candidates])]:
                        x[r, i] = tok
    return x, nfe


def threshold_count(threshold):
    return lambda conf: max(1, sum(c >= threshold for c in conf))


def factor_count(factor):
    def count(conf):
        n = 1
        while n < len(conf) and (n + 2) * (1 - conf[n]) <= factor:  # conf[n] is rank n + 1
            n += 1
        return n
    return count


class Sharpened(torch.nn.Module):
    """The tiny model's logits times `scale`: its near-uniform outputs become confidences spread over (0, 1)."""

    def __init__(self, model, scale: float = 20.0):
        super().__init__()
        self.model, self.scale, self.config = model, scale, model.config

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.model(input_ids, **kwargs).logits * self.scale)


@pytest.mark.parametrize("name, option, count", [
    ("threshold", {"threshold": 0.5}, threshold_count(0.5)),
    ("threshold", {"threshold": 0.772}, threshold_count(0.772)),
    ("factor", {"factor": 1.0}, factor_count(1.0)),
    ("factor", {"factor": 2.0}, factor_count(2.0)),
])
def test_dynamic_rules_equal_reference_loop(tiny_model_factory, name, option, count):
    model = Sharpened(tiny_model_factory())
    prompt = torch.randint(0, 66, (2, 5))
    out = generate(model, prompt, gen_length=8, steps=2, block_length=4, sampler=name, **option)
    ref, nfe = reference_fastdllm_greedy(model, prompt, 8, 4, 66, count)
    assert torch.equal(out.sequences, ref)
    assert out.nfe == nfe


# ---------------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_rule_fills_the_canvas(tiny_model_factory, name, temperature):
    model = tiny_model_factory()
    prompt = torch.randint(0, 66, (2, 5))
    out = generate(model, prompt, gen_length=8, steps=4, block_length=4, sampler=name, temperature=temperature,
                   generator=torch.Generator().manual_seed(0))
    assert out.sequences.shape == (2, 13) and torch.equal(out.sequences[:, :5], prompt)
    assert not (out.sequences == 66).any()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_rules_never_commit_mask_even_when_the_model_prefers_it(name):
    model = FixedMarginals(MARGINALS)  # its [MASK] logit beats every token
    out = generate(model, torch.zeros(1, 1, dtype=torch.long), gen_length=8, steps=4, block_length=4,
                   sampler=name, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert not (out.sequences == model.config.mask_token_id).any()


@pytest.mark.parametrize("name, options", [
    ("threshold", {"factor": 1.0}),
    ("factor", {"threshold": 0.9}),
    ("maskgit_plus", {"score": "entropy"}),
    ("ancestral", {"alg_temp": 0.1}),
    ("threshold", {"threshold": 1.5}),
    ("threshold", {"threshold": -0.1}),
    ("factor", {"factor": 0.0}),
    ("entropy", {"alg_temp": -1.0}),
    ("ancestral", {"schedule": "sideways"}),
])
def test_bad_options_are_value_errors(name, options):
    with pytest.raises(ValueError):
        build_sampler(name, mask_token_id=MASK, **options)
