"""Sampling controls: top-k, top-p and the repetition penalty by hand, and their wiring into `generate`."""

import pytest
import torch

from textdiff.samplers import generate
from textdiff.samplers.logits import filter_top_k, filter_top_p, process_logits, repetition_penalty
from textdiff.samplers.masked import RemaskingSampler

INF = float("inf")


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert filter_top_k(logits, 2).tolist() == [[-INF, 3.0, 2.0, -INF]]
    assert filter_top_k(logits, 4).tolist() == logits.tolist()
    assert filter_top_k(torch.tensor([[1.0, 2.0, 2.0, 0.0]]), 1).tolist() == [[-INF, 2.0, 2.0, -INF]]  # ties stay


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    logits = probs.log()
    # sorted: 0.5, 0.3, 0.15, 0.05; mass before each: 0, 0.5, 0.8, 0.95
    assert torch.isfinite(filter_top_p(logits, 0.7)).tolist() == [[False, True, False, True]]
    assert torch.isfinite(filter_top_p(logits, 0.5)).tolist() == [[False, True, False, False]]
    assert torch.isfinite(filter_top_p(logits, 0.85)).tolist() == [[True, True, False, True]]
    assert torch.isfinite(filter_top_p(logits, 0.01)).tolist() == [[False, True, False, False]]  # argmax stays
    # at temperature 2 the nucleus is taken on softmax(logits / 2) ~ sqrt(p): 0.35, 0.27, 0.19, 0.11 (normalised)
    flat = probs.sqrt() / probs.sqrt().sum()
    sorted_flat = sorted(flat[0].tolist(), reverse=True)
    assert sorted_flat[0] + sorted_flat[1] < 0.7 < sum(sorted_flat[:3])
    assert torch.isfinite(filter_top_p(logits, 0.7, temperature=2.0)).tolist() == [[True, True, False, True]]


def test_repetition_penalty_is_ctrl_on_the_tokens_of_the_canvas():
    logits = torch.tensor([[[2.0, -1.0, 3.0, 0.5]]])  # [1, 1, 4]
    canvas = torch.tensor([[0, 1, 3]])
    ignore = torch.tensor([[False, False, True]])  # e.g. the [MASK] id 3, or padding
    out = repetition_penalty(logits, canvas, 2.0, ignore=ignore)
    assert out.tolist() == [[[1.0, -2.0, 3.0, 0.5]]]
    assert repetition_penalty(logits, canvas, 1.0) is logits
    # process_logits: [MASK] (id 3) is never present and never kept
    out = process_logits(logits, canvas, mask_token_id=3, penalty=2.0)
    assert out.tolist() == [[[1.0, -2.0, 3.0, -INF]]]


def test_controls_reach_the_rule_in_generate(tiny_model_factory):
    model = tiny_model_factory()
    prompt = torch.randint(0, 66, (2, 5))
    greedy = generate(model, prompt, gen_length=8, steps=8, block_length=4).sequences
    # top-k 1 or a vanishing nucleus leaves only the argmax: sampling at temperature 1 is then greedy
    for controls in ({"top_k": 1}, {"top_p": 1e-6}):
        sampled = generate(model, prompt, gen_length=8, steps=8, block_length=4, temperature=1.0,
                           generator=torch.Generator().manual_seed(0), **controls).sequences
        assert torch.equal(sampled, greedy)
    # the rule sees exactly the penalised logits of the canvas it is given
    seen = []

    class Recording(RemaskingSampler):
        def step(self, model_output, timestep, sample, **kwargs):
            seen.append(model_output.clone())
            return super().step(model_output, timestep, sample, **kwargs)

    generate(model, prompt, gen_length=8, steps=8, block_length=4, sampler=Recording(66))
    plain = seen[0]
    seen.clear()
    generate(model, prompt, gen_length=8, steps=8, block_length=4, sampler=Recording(66), repetition_penalty=1.5)
    canvas = torch.cat([prompt, torch.full((2, 8), 66)], dim=1)  # the canvas of the first step
    want = process_logits(plain, canvas, mask_token_id=66, penalty=1.5)
    assert torch.equal(seen[0], want)
    assert not torch.equal(seen[0], plain)


@pytest.mark.parametrize("controls, match", [({"top_k": 0}, "top_k must be an integer >= 1"),
                                             ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
                                             ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0")])
def test_out_of_range_controls_are_clear_errors(tiny_model_factory, controls, match):
    with pytest.raises(ValueError, match=match):
        generate(tiny_model_factory(), torch.zeros(1, 3, dtype=torch.long), gen_length=4, steps=4, block_length=4,
                 **controls)
