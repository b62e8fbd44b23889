"""Adaptation training: attention-mask annealing (causal at step 0, bidirectional after anneal_steps, density on
schedule) and the logit shift (position i scored by the hidden state at i - 1) in loss, ELBO and sampler."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from textdiff.adapters import anneal_ratio, annealed_attention_mask
from textdiff.objectives import MaskedDiffusionObjective
from textdiff.samplers import generate

MASK_ID = 66


# ---------------------------------------------------------------------------------------------- schedule and mask
def test_ratio_ramps_linearly_from_zero_to_one():
    assert [anneal_ratio(s, 4) for s in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert anneal_ratio(0, 0) == 1.0  # off: bidirectional from the start


def test_mask_is_exactly_causal_at_ratio_zero_and_none_at_one():
    mask = annealed_attention_mask(3, 9, 0.0, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (3, 1, 9, 9) and mask.dtype == torch.bool
    assert torch.equal(mask[:, 0], torch.ones(9, 9, dtype=torch.bool).tril().expand(3, 9, 9))
    assert annealed_attention_mask(3, 9, 1.0) is None  # the model's own bidirectional path


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_density_of_non_causal_pairs_follows_the_ratio(ratio):
    B, L = 8, 64
    mask = annealed_attention_mask(B, L, ratio, generator=torch.Generator().manual_seed(1))[:, 0]  # [B, L, L]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    assert mask[:, causal].all()  # the causal part is always visible
    future = mask[:, ~causal].float()  # B * L(L-1)/2 = 16,128 Bernoulli(ratio) draws
    std = (ratio * (1 - ratio) / future.numel()) ** 0.5
    assert abs(future.mean().item() - ratio) < 5 * std
    # drawn independently per sequence, not one pattern for the batch
    assert not torch.equal(mask[0], mask[1])


def test_padded_keys_stay_hidden_and_rows_never_empty():
    pad = torch.ones(2, 6, dtype=torch.long)
    pad[1, 4:] = 0
    for ratio in (0.0, 0.6, 1.0):
        mask = annealed_attention_mask(2, 6, ratio, key_padding_mask=pad, generator=torch.Generator().manual_seed(0))
        assert not mask[1, 0, :4, 4:].any()  # real queries never see padding
        assert mask[:, 0].any(-1).all()  # every query sees at least itself


# ---------------------------------------------------------------------------------------------- objective
class RecordingModel(nn.Module):
    """Stand-in denoiser that records the attention masks it is called with."""

    def __init__(self, vocab: int = 67):
        super().__init__()
        self.head = nn.Linear(4, vocab)
        self.masks: list = []

    def forward(self, input_ids, attention_mask=None, **kwargs):
        self.masks.append(attention_mask)
        hidden = torch.ones(*input_ids.shape, 4)
        return SimpleNamespace(logits=self.head(hidden))


def test_objective_anneals_with_the_step_it_is_given():
    batch = {"input_ids": torch.randint(0, MASK_ID, (2, 10)), "attention_mask": torch.ones(2, 10, dtype=torch.long)}
    objective = MaskedDiffusionObjective(mask_token_id=MASK_ID, anneal_steps=10)
    assert objective.step_dependent
    model = RecordingModel()
    for step in (0, 5, 10, 50):
        out = objective(model, batch, step=step, generator=torch.Generator().manual_seed(step))
        assert out.logs["attention_anneal_ratio"] == min(1.0, step / 10)
    causal, half, full, later = model.masks
    assert torch.equal(causal[:, 0], torch.ones(10, 10, dtype=torch.bool).tril().expand(2, 10, 10))
    assert half.shape == (2, 1, 10, 10) and causal[:, 0].sum() < half[:, 0].sum() < 2 * 100
    assert full.dim() == 2 and later.dim() == 2  # after annealing: the plain [B, L] padding mask
    with pytest.raises(ValueError, match="pass the training step"):
        objective(model, batch)
    assert not MaskedDiffusionObjective(mask_token_id=MASK_ID).step_dependent


def test_step_zero_loss_equals_the_causal_model_loss(tiny_model_factory):
    """At step 0 the annealed bidirectional model computes exactly what the same weights compute causally."""
    bidirectional = tiny_model_factory()
    causal = tiny_model_factory(attention_mode="causal")
    batch = {"input_ids": torch.randint(0, MASK_ID, (3, 12))}
    annealed = MaskedDiffusionObjective(mask_token_id=MASK_ID, anneal_steps=100, logit_shift=True)
    plain = MaskedDiffusionObjective(mask_token_id=MASK_ID, logit_shift=True)
    a = annealed(bidirectional, batch, step=0, generator=torch.Generator().manual_seed(3)).loss
    b = plain(causal, batch, generator=torch.Generator().manual_seed(3)).loss
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    c = annealed(bidirectional, batch, step=100, generator=torch.Generator().manual_seed(3)).loss
    d = plain(bidirectional, batch, generator=torch.Generator().manual_seed(3)).loss
    torch.testing.assert_close(c, d, rtol=0, atol=0)
    assert (a - c).abs() > 1e-4


# ---------------------------------------------------------------------------------------------- logit shift
TARGET = torch.tensor([[5, 9, 14, 3, 27, 41, 8, 19, 33, 2, 50, 12]])  # [1, L]


class NextTokenOracle(nn.Module):
    """Logits at position i are one-hot on TARGET[i + 1] whatever the input (an AR head that knows the text)."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(mask_token_id=MASK_ID, eos_token_id=None, logit_shift=True,
                                      max_position_embeddings=64, num_hidden_layers=1)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        B, L = input_ids.shape
        logits = torch.zeros(B, L, 67)
        logits[:, :-1] = 40.0 * nn.functional.one_hot(TARGET[:, 1:L].expand(B, -1), 67)
        return SimpleNamespace(logits=logits)


def test_shift_aligns_position_i_with_token_i_plus_1_in_training_loss_and_elbo():
    batch = {"input_ids": TARGET.expand(4, -1)}
    oracle = NextTokenOracle()
    shifted = MaskedDiffusionObjective(mask_token_id=MASK_ID, logit_shift=True, anneal_steps=5)
    g = torch.Generator().manual_seed(0)
    for step in range(8):
        assert shifted(oracle, batch, step=step, generator=g).loss.item() < 1e-6
    nll, n_tokens = shifted.nll(oracle, batch, generator=torch.Generator().manual_seed(0), num_samples=4)
    assert nll.item() < 1e-6 and n_tokens.item() == 4 * (TARGET.shape[1] - 1)  # position 0 is never scored
    unshifted = MaskedDiffusionObjective(mask_token_id=MASK_ID)
    assert unshifted.nll(oracle, batch, generator=torch.Generator().manual_seed(0))[0].item() > 10.0


def test_shift_aligns_position_i_with_token_i_plus_1_in_the_sampler():
    oracle = NextTokenOracle()
    prompt = TARGET[:, :4]
    for sampler in ("low_confidence", "maskgit_plus", "threshold"):
        out = generate(oracle, prompt, gen_length=8, steps=8, block_length=4, sampler=sampler)
        assert torch.equal(out.sequences, TARGET), sampler  # the oracle's text, each token in its own place
    unshifted = generate(oracle, prompt, gen_length=8, steps=8, block_length=4, logit_shift=False).sequences
    assert torch.equal(unshifted[:, 4:11], TARGET[:, 5:12])  # without the shift every token lands one early
