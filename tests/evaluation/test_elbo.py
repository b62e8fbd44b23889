"""LLaDA's Monte Carlo ELBO: unbiased against the exact enumeration over every mask, variance 1/mc_num, AR exact."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from textdiff import TextDiffConfig, TextDiffModel
from textdiff.evaluation.metrics import elbo_log_likelihood, elbo_perplexity, load, log_likelihood
from textdiff.evaluation.metrics.elbo import stratified_mask_counts

VOCAB, MASK = 5, 4  # tokens 0..3 and [MASK]
PREFIX, TARGET = [1, 3], [0, 2, 3, 1]  # target length 4


def tiny(logit_shift=False, attention_mode="bidirectional", mask_token_id=MASK, seed=2) -> TextDiffModel:
    torch.manual_seed(seed)
    model = TextDiffModel(TextDiffConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=32, max_position_embeddings=16, mask_token_id=mask_token_id, logit_shift=logit_shift,
        attention_mode=attention_mode,
    )).eval()
    with torch.no_grad():  # sharper than the init's near-uniform logits, so masks matter
        for p in model.parameters():
            p.mul_(6.0)
    return model


@torch.no_grad()
def exact_elbo(model, prefix, target, shift, weighted=True) -> float:
    """E over l ~ U{1..L} and a uniform l-subset M of (L / l) sum_{i in M} log p(x_i | masked), by enumeration.
    Written independently of the estimator: the shift is done here by hand, SUBS by dropping the [MASK] column."""
    length = len(target)
    total = 0.0
    for count in range(1, length + 1):
        subsets = list(itertools.combinations(range(length), count))
        for subset in subsets:
            noisy = list(prefix) + [MASK if i in subset else tok for i, tok in enumerate(target)]
            logits = model(input_ids=torch.tensor([noisy])).logits[0].double()  # [P + L, V]
            logits[:, MASK] = -math.inf
            logp = torch.log_softmax(logits, dim=-1)
            value = 0.0
            for i in subset:
                row = len(prefix) + i - (1 if shift else 0)
                value += float(logp[row, target[i]])
            total += (length / count if weighted else 1.0) * value / (length * len(subsets))
    return total


def test_stratified_counts_cover_each_count_and_are_marginally_uniform():
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([stratified_mask_counts(4, 4, generator=generator) for _ in range(2000)])  # [2000, 4]
    assert all(sorted(row.tolist()) == [1, 2, 3, 4] for row in draws)  # b = L: every count once per batch
    for j in range(4):  # each stratum marginally uniform over {1..4}
        freq = torch.bincount(draws[:, j], minlength=5)[1:].double() / 2000
        assert torch.allclose(freq, torch.full((4,), 0.25, dtype=torch.float64), atol=0.04)
    counts = stratified_mask_counts(3, 7, generator=generator)
    assert counts.min() >= 1 and counts.max() <= 7


@pytest.mark.parametrize("shift", [False, True])
def test_estimator_mean_equals_exact_enumeration(shift):
    model = tiny(logit_shift=shift)
    exact = exact_elbo(model, PREFIX, TARGET, shift)
    generator = torch.Generator().manual_seed(1)
    draws = elbo_log_likelihood(model, PREFIX, TARGET, mc_num=4000, batch_size=4, generator=generator,
                                return_draws=True)  # [4000]
    batch_means = draws.view(-1, 4).mean(dim=1).double()  # independent batches
    mean = float(batch_means.mean())
    stderr = float(batch_means.std()) / math.sqrt(batch_means.numel())
    assert abs(mean - exact) < 3 * stderr, (mean, exact, stderr)
    # the test has the power to see a wrong weight: without L / l the expectation is far outside 3 SE
    assert abs(exact_elbo(model, PREFIX, TARGET, shift, weighted=False) - exact) > 10 * stderr
    assert abs(exact_elbo(model, PREFIX, TARGET, not shift) - exact) > 10 * stderr  # nor a wrong shift
    assert exact < 0  # a log-likelihood bound, in nats


def test_variance_falls_as_one_over_mc_num():
    model = tiny()
    generator = torch.Generator().manual_seed(2)

    def estimates(mc_num: int, repeats: int = 200) -> torch.Tensor:
        return torch.tensor([elbo_log_likelihood(model, PREFIX, TARGET, mc_num=mc_num, batch_size=4,
                                                 generator=generator) for _ in range(repeats)], dtype=torch.float64)

    ratio = float(estimates(4).var() / estimates(32).var())
    assert 8 / 1.6 < ratio < 8 * 1.6, ratio


def test_ar_model_gets_its_exact_likelihood():
    model = tiny(attention_mode="causal", mask_token_id=None)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([PREFIX + TARGET])).logits[0].double(), dim=-1)
    expected = sum(float(logp[len(PREFIX) + i - 1, tok]) for i, tok in enumerate(TARGET))
    assert log_likelihood(model, PREFIX, TARGET) == pytest.approx(expected, rel=1e-5)


def test_bad_input_is_one_line():
    with pytest.raises(ValueError, match="needs a masked-diffusion model with a mask token") as err:
        elbo_log_likelihood(tiny(mask_token_id=None), PREFIX, TARGET)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="autoregressive"):
        elbo_log_likelihood(tiny(attention_mode="causal"), PREFIX, TARGET)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        elbo_log_likelihood(tiny(), PREFIX, TARGET, mc_num=10, batch_size=4)
    with pytest.raises(ValueError, match="at least one prefix token"):
        elbo_log_likelihood(tiny(logit_shift=True), [], TARGET)
    with pytest.raises(ValueError, match="unknown metric 'elbo_ppl'") as err:
        load("elbo_ppl")
    assert "\n" not in str(err.value) and "elbo_perplexity" in str(err.value)


def test_elbo_perplexity_module_matches_function(tmp_path):
    from textdiff.data.tokenizers import train_bpe_tokenizer

    texts = ["def f(x):\n    return x\n", "x = 1\n"]
    tokenizer = train_bpe_tokenizer(texts * 20, vocab_size=280, save_dir=tmp_path)
    torch.manual_seed(0)
    TextDiffModel(TextDiffConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=64, mask_token_id=tokenizer.mask_token_id,
    )).save_pretrained(tmp_path)
    direct = elbo_perplexity(texts, str(tmp_path), mc_num=8, batch_size=4, seed=3)
    via_module = load("elbo_perplexity").compute(predictions=texts, checkpoint=str(tmp_path), mc_num=8,
                                                 batch_size=4, seed=3)
    assert via_module["perplexity"] == pytest.approx(direct["perplexity"])
    assert direct["bound"] and direct["num_tokens"] == sum(direct["token_counts"])
    # an untrained model over ~280 tokens: the bound is at least the uniform-ish PPL's order of magnitude
    assert direct["perplexity"] > 10
