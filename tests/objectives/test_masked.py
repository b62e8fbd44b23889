import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import textdiff.objectives.masked as masked_module
from textdiff.objectives import MaskedDiffusionObjective, apply_mask, masked_diffusion_loss
from textdiff.schedules import get_masking_schedule

VOCAB = 11
MASK_ID = VOCAB - 1  # data tokens are drawn from [0, MASK_ID), so [MASK] in the input means "noised"


class TinyModel(nn.Module):
    """Stand-in denoiser: embedding + context mixing + linear head; records every input."""

    def __init__(self, vocab_size: int = VOCAB, dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(vocab_size, dim)
        self.head = nn.Linear(dim, vocab_size)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(vocab_size, dim, generator=generator))
            self.head.weight.copy_(torch.randn(vocab_size, dim, generator=generator))
            self.head.bias.copy_(torch.randn(vocab_size, generator=generator))
        self.inputs: list[torch.Tensor] = []

    def forward(self, input_ids, attention_mask=None, **kwargs):
        if attention_mask is not None:
            assert attention_mask.shape == input_ids.shape
        self.inputs.append(input_ids.detach().clone())
        hidden = self.embed(input_ids)  # [B, L, D]
        hidden = torch.tanh(hidden + hidden.mean(dim=1, keepdim=True))  # [B, L, D]
        return SimpleNamespace(logits=self.head(hidden))  # [B, L, V]


def make_batch(batch_size=3, length=9, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, MASK_ID, (batch_size, length), generator=generator)
    attention_mask = torch.ones(batch_size, length, dtype=torch.long)
    attention_mask[1, -3:] = 0  # right padding
    attention_mask[2, -1:] = 0
    prompt_mask = torch.zeros(batch_size, length, dtype=torch.bool)
    prompt_mask[0, :2] = True
    prompt_mask[1, :4] = True
    prompt_mask[2, :1] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "prompt_mask": prompt_mask}


def loop_weighted_ce(logits, targets, noisy, weight_of_row, mask_id=MASK_ID):
    """Per-row sum over noised positions of -log p(target) * weight, in python loops, with MDLM's SUBS p: the
    softmax over the vocabulary without the [MASK] column."""
    per_row = []
    for b in range(logits.shape[0]):
        total = 0.0
        for i in range(logits.shape[1]):
            if int(noisy[b, i]) != mask_id:
                continue
            row = [float(v) if j != mask_id else -math.inf for j, v in enumerate(logits[b, i])]
            top = max(row)
            log_partition = top + math.log(sum(math.exp(v - top) for v in row))
            total += (log_partition - row[int(targets[b, i])]) * weight_of_row(b)
        per_row.append(total)
    return per_row


def force_timesteps(monkeypatch, t):
    monkeypatch.setattr(masked_module, "sample_timesteps", lambda batch_size, **kwargs: t.clone())


# ------------------------------------------------------------------------------ pure functions


def test_masked_diffusion_loss_matches_loop():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, VOCAB, generator=generator)
    targets = torch.randint(0, MASK_ID, (2, 5), generator=generator)
    masked = torch.rand(2, 5, generator=generator) < 0.5
    noisy = torch.where(masked, MASK_ID, targets)
    row_weights = torch.tensor([2.0, 5.0])
    expected = sum(loop_weighted_ce(logits, targets, noisy, lambda b: float(row_weights[b]))) / 7.0
    got = masked_diffusion_loss(logits, targets, masked, row_weights, torch.tensor(7.0), mask_token_id=MASK_ID)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # per-token weights [B, L] equal to the row weights give the same loss
    got_tokens = masked_diffusion_loss(
        logits, targets, masked, row_weights[:, None].expand(2, 5), 7.0, mask_token_id=MASK_ID
    )
    assert got_tokens.item() == pytest.approx(expected, rel=1e-5)


def test_masked_diffusion_loss_is_subs_the_mask_logit_never_enters():
    """MDLM's SUBS: the [MASK] logit is -inf, so its value cannot change the loss, and the per-token loss is
    -logit[x0] + logsumexp over the other columns (not over all V, which would add log(1 + p_mask / ...))."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 6, VOCAB, generator=generator, dtype=torch.float64)
    logits[..., MASK_ID] = 2.0  # a model that puts real mass on [MASK]
    targets = torch.randint(0, MASK_ID, (3, 6), generator=generator)
    masked = torch.ones(3, 6, dtype=torch.bool)
    weights = torch.ones(3)
    got = masked_diffusion_loss(logits, targets, masked, weights, 18.0, mask_token_id=MASK_ID)
    without_mask_column = logits[..., :MASK_ID]  # the mask is the last id
    expected = -without_mask_column.log_softmax(-1).gather(-1, targets[..., None]).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    full_softmax = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert got.item() < full_softmax.item() - 1e-3  # the old parameterisation scored differently
    for mask_logit in (-30.0, 0.0, 50.0):
        moved = logits.clone()
        moved[..., MASK_ID] = mask_logit
        again = masked_diffusion_loss(moved, targets, masked, weights, 18.0, mask_token_id=MASK_ID)
        assert again.item() == pytest.approx(got.item(), rel=1e-12)


def test_masked_diffusion_loss_subs_gradient_is_finite_and_zero_on_the_mask_column():
    logits = torch.randn(2, 4, VOCAB, requires_grad=True)
    targets = torch.randint(0, MASK_ID, (2, 4), generator=torch.Generator().manual_seed(0))
    loss = masked_diffusion_loss(logits, targets, torch.ones(2, 4, dtype=torch.bool), torch.ones(2), 8.0,
                                 mask_token_id=MASK_ID)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[..., MASK_ID] == 0)
    with pytest.raises(ValueError, match=r"\[MASK\] id"):
        bad = targets.clone()
        bad[0, 0] = MASK_ID
        masked_diffusion_loss(logits, bad, torch.ones(2, 4, dtype=torch.bool), torch.ones(2), 8.0,
                              mask_token_id=MASK_ID)


def test_masked_diffusion_loss_empty_mask_is_zero_with_grad():
    logits = torch.randn(2, 4, VOCAB, requires_grad=True)
    targets = torch.zeros(2, 4, dtype=torch.long)
    loss = masked_diffusion_loss(logits, targets, torch.zeros(2, 4, dtype=torch.bool), torch.ones(2), 1.0,
                                 mask_token_id=MASK_ID)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_apply_mask_rate_and_protected_positions(name):
    schedule = get_masking_schedule(name)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9])
    length = 20_000
    input_ids = torch.zeros(4, length, dtype=torch.long)
    maskable = torch.ones(4, length, dtype=torch.bool)
    maskable[:, :100] = False  # prompt
    maskable[:, -50:] = False  # padding
    noisy, masked = apply_mask(
        input_ids, t, schedule, MASK_ID, maskable=maskable, generator=torch.Generator().manual_seed(0)
    )
    assert not masked[~maskable].any()
    assert torch.equal(noisy == MASK_ID, masked)
    assert torch.equal(noisy[~masked], input_ids[~masked])
    n = int(maskable[0].sum())
    for b in range(4):
        p = float(schedule.mask_prob(t[b : b + 1]))
        rate = masked[b, maskable[b]].float().mean().item()
        assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n)


# ------------------------------------------------------------------------------ training loss


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_token_normalised_loss_matches_loop(monkeypatch, schedule):
    batch = make_batch()
    del batch["prompt_mask"]  # pretraining: everything but padding is maskable
    t = torch.tensor([0.35, 0.8, 0.6])
    force_timesteps(monkeypatch, t)
    model = TinyModel()
    objective = MaskedDiffusionObjective(mask_token_id=MASK_ID, schedule=schedule)
    out = objective(model, batch, generator=torch.Generator().manual_seed(1))

    noisy = model.inputs[-1]
    assert (noisy == MASK_ID).any()
    assert not (noisy == MASK_ID)[batch["attention_mask"] == 0].any()  # padding never noised
    logits = model(noisy).logits.detach()
    if schedule == "linear":
        weight = [1 / float(v) for v in t]
    else:  # closed form, written independently of the library
        weight = [
            (math.pi / 2) * math.sin(math.pi * float(v) / 2) / (1 - math.cos(math.pi * float(v) / 2))
            for v in t
        ]
    per_row = loop_weighted_ce(logits, batch["input_ids"], noisy, lambda b: weight[b])
    num_real_tokens = int(batch["attention_mask"].sum())
    assert out.loss.item() == pytest.approx(sum(per_row) / num_real_tokens, rel=1e-5)
    assert out.logs["t_mean"] == pytest.approx(float(t.mean()))
    num_noised = int((noisy == MASK_ID).sum())
    assert out.logs["mask_ratio"] == pytest.approx(num_noised / num_real_tokens)


@pytest.mark.parametrize("explicit_lengths", [False, True])
def test_answer_normalised_loss_matches_loop(monkeypatch, explicit_lengths):
    batch = make_batch()
    t = torch.tensor([0.9, 0.7, 0.95])
    force_timesteps(monkeypatch, t)
    if explicit_lengths:  # e.g. LLaDA counts trained EOS pads in the answer length
        batch["answer_lengths"] = torch.tensor([10, 3, 12])
        answer_lengths = [10, 3, 12]
    else:  # non-prompt, non-padding positions
        answer_lengths = [9 - 2, 9 - 4 - 3, 9 - 1 - 1]
    model = TinyModel()
    objective = MaskedDiffusionObjective(mask_token_id=MASK_ID, normalization="answer")
    out = objective(model, batch, generator=torch.Generator().manual_seed(2))

    noisy = model.inputs[-1]
    assert not (noisy == MASK_ID)[batch["prompt_mask"]].any()
    logits = model(noisy).logits.detach()
    per_row = loop_weighted_ce(logits, batch["input_ids"], noisy, lambda b: 1 / float(t[b]))
    expected = sum(per_row[b] / answer_lengths[b] for b in range(3)) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_prompt_and_padding_never_masked_and_mask_rate(monkeypatch):
    batch = make_batch(batch_size=4, length=16, seed=3)
    protected = batch["prompt_mask"] | (batch["attention_mask"] == 0)
    objective = MaskedDiffusionObjective(mask_token_id=MASK_ID, normalization="answer")
    model = TinyModel()
    t = torch.tensor([0.2, 0.5, 0.7, 0.9])
    force_timesteps(monkeypatch, t)
    generator = torch.Generator().manual_seed(0)
    num_draws = 300
    for _ in range(num_draws):
        objective(model, batch, generator=generator)
    noised = torch.stack(model.inputs) == MASK_ID  # [draws, B, L]
    assert not noised[:, protected].any()
    for b in range(4):
        answer = ~protected[b]
        n = int(answer.sum()) * num_draws
        rate = noised[:, b, answer].float().mean().item()
        p = float(t[b])  # linear: mask prob = t
        assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_loss_ignores_logits_at_prompt_and_padding():
    batch = make_batch()
    protected = batch["prompt_mask"] | (batch["attention_mask"] == 0)

    class Scrambled(TinyModel):
        def forward(self, input_ids, attention_mask=None, **kwargs):
            out = super().forward(input_ids, attention_mask)
            noise = 100 * torch.randn(out.logits.shape)  # [B, L, V]
            return SimpleNamespace(logits=torch.where(protected[..., None], noise, out.logits))

    for normalization in ["token", "answer"]:
        objective = MaskedDiffusionObjective(mask_token_id=MASK_ID, normalization=normalization)
        clean = objective(TinyModel(), batch, generator=torch.Generator().manual_seed(5)).loss
        scrambled = objective(Scrambled(), batch, generator=torch.Generator().manual_seed(5)).loss
        assert clean.item() == pytest.approx(scrambled.item(), rel=1e-6)


def test_loss_backpropagates():
    model = TinyModel()
    batch = make_batch()
    out = MaskedDiffusionObjective(mask_token_id=MASK_ID, antithetic=True)(
        model, batch, generator=torch.Generator().manual_seed(0)
    )
    out.loss.backward()
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert model.head.weight.grad.abs().sum() > 0


def test_logit_shift_aligns_position_i_with_token_i_plus_1():
    batch = make_batch(batch_size=4, length=12, seed=7)
    clean = batch["input_ids"]

    class NextTokenOracle(nn.Module):
        """Logits at i are one-hot on the clean token i + 1 (an AR-style head)."""

        def __init__(self):
            super().__init__()
            self.inputs = []

        def forward(self, input_ids, attention_mask=None, **kwargs):
            self.inputs.append(input_ids.clone())
            logits = torch.zeros(*clean.shape, VOCAB)  # [B, L, V]
            logits[:, :-1] = 30.0 * nn.functional.one_hot(clean[:, 1:], VOCAB)
            return SimpleNamespace(logits=logits)

    pretrain = {"input_ids": clean}
    oracle = NextTokenOracle()
    shifted = MaskedDiffusionObjective(mask_token_id=MASK_ID, logit_shift=True)
    generator = torch.Generator().manual_seed(0)
    losses = [shifted(oracle, pretrain, generator=generator).loss.item() for _ in range(20)]
    assert max(losses) < 1e-6
    assert not (torch.stack(oracle.inputs)[:, :, 0] == MASK_ID).any()  # position 0 has no predictor
    unshifted = MaskedDiffusionObjective(mask_token_id=MASK_ID)
    assert unshifted(oracle, pretrain, generator=torch.Generator().manual_seed(0)).loss.item() > 1.0


def test_random_truncation_shortens_batch():
    batch = make_batch(length=20)
    del batch["prompt_mask"]
    model = TinyModel()
    objective = MaskedDiffusionObjective(mask_token_id=MASK_ID, random_truncation=1.0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        assert torch.isfinite(objective(model, batch, generator=generator).loss)
    lengths = {x.shape[1] for x in model.inputs}
    assert all(1 <= n <= 20 for n in lengths) and len(lengths) > 5
    model.inputs.clear()
    never = MaskedDiffusionObjective(mask_token_id=MASK_ID, random_truncation=0.0)
    for _ in range(5):
        never(model, batch, generator=generator)
    assert {x.shape[1] for x in model.inputs} == {20}


def test_configuration_errors():
    batch = make_batch()
    del batch["prompt_mask"]
    with pytest.raises(ValueError, match="prompt_mask"):
        MaskedDiffusionObjective(mask_token_id=MASK_ID, normalization="answer")(TinyModel(), batch)
    with pytest.raises(ValueError, match="normalization"):
        MaskedDiffusionObjective(mask_token_id=MASK_ID, normalization="sequence")
    with pytest.raises(ValueError, match="random_truncation"):
        MaskedDiffusionObjective(mask_token_id=MASK_ID, normalization="answer", random_truncation=0.01)
    with pytest.raises(ValueError, match="linear"):
        MaskedDiffusionObjective(mask_token_id=MASK_ID, schedule="nope")
    objective = MaskedDiffusionObjective(mask_token_id=MASK_ID, schedule="cosine")
    assert isinstance(objective, MaskedDiffusionObjective) and objective.attention_mode == "bidirectional"
    objective.check_attention_mode("bidirectional")
    with pytest.raises(ValueError, match="causal"):
        objective.check_attention_mode("causal")


# ------------------------------------------------------------------------------ likelihood (ELBO)

IID_PROBS = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
IID_MASK_ID = len(IID_PROBS)


class IIDOracle(nn.Module):
    """Exact denoiser for iid tokens ~ p: every masked position is predicted as p, whatever the context."""

    def __init__(self, mask_logit: float = -1e4):  # default: never predicts [MASK]
        super().__init__()
        self.mask_logit = mask_logit

    def forward(self, input_ids, attention_mask=None, **kwargs):
        log_probs = torch.cat([IID_PROBS.log(), torch.tensor([self.mask_logit])])  # [V]
        return SimpleNamespace(logits=log_probs.expand(*input_ids.shape, -1))  # [B, L, V]


def test_elbo_is_subs_the_mask_logit_never_enters():
    """The ELBO scores with SUBS: an oracle that also puts mass on [MASK] scores exactly like the one that never
    predicts it, mask for mask (same generator), so it is still the exact denoiser of the iid data."""
    input_ids = torch.multinomial(IID_PROBS, 4 * 16, replacement=True, generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": input_ids.view(4, 16)}
    objective = MaskedDiffusionObjective(mask_token_id=IID_MASK_ID)
    never, _ = objective.nll(IIDOracle(), batch, generator=torch.Generator().manual_seed(1), num_samples=4)
    for mask_logit in (0.0, 3.0):  # [MASK] would get about 1/2 and 95% of a full softmax
        often, _ = objective.nll(IIDOracle(mask_logit), batch, generator=torch.Generator().manual_seed(1),
                                 num_samples=4)
        assert often.item() == pytest.approx(never.item(), rel=1e-6)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "loglinear"])
def test_elbo_of_exact_denoiser_equals_true_nll(schedule):
    # For iid tokens the continuous-time ELBO with the exact denoiser equals the true NLL:
    # E_t[w(t) * sum_{i masked} -log p(x_i)] = sum_i -log p(x_i). A wrong weight breaks this.
    generator = torch.Generator().manual_seed(0)
    num_groups, group_size, length = 16, 8, 32
    objective = MaskedDiffusionObjective(mask_token_id=IID_MASK_ID, schedule=schedule)
    errors, exact_total, estimate_total, count_total = [], 0.0, 0.0, 0
    for _ in range(num_groups):
        input_ids = torch.multinomial(IID_PROBS, group_size * length, replacement=True, generator=generator)
        input_ids = input_ids.view(group_size, length)  # [B, L]
        exact = -IID_PROBS.log()[input_ids].double().sum().item()
        estimate, count = objective.nll(
            IIDOracle(), {"input_ids": input_ids}, generator=generator, num_samples=8
        )
        assert int(count) == group_size * length
        errors.append(estimate.item() - exact)
        exact_total, estimate_total, count_total = (
            exact_total + exact,
            estimate_total + estimate.item(),
            count_total + int(count),
        )
    errors = torch.tensor(errors, dtype=torch.float64)
    std_err = errors.std().item() / math.sqrt(num_groups)
    assert abs(errors.mean().item()) < 4 * std_err
    assert abs(estimate_total - exact_total) / exact_total < 0.05  # the estimator is also precise
    entropy = -(IID_PROBS * IID_PROBS.log()).sum().item()
    assert estimate_total / count_total == pytest.approx(entropy, rel=0.05)


def test_elbo_scores_only_answer_tokens_and_is_deterministic_with_generator():
    batch = make_batch(batch_size=4, length=16, seed=1)
    batch["input_ids"] = batch["input_ids"] % IID_MASK_ID
    objective = MaskedDiffusionObjective(mask_token_id=IID_MASK_ID, normalization="answer")
    answer = ~batch["prompt_mask"] & batch["attention_mask"].bool()
    first, count = objective.nll(
        IIDOracle(), batch, generator=torch.Generator().manual_seed(3), num_samples=4
    )
    again, _ = objective.nll(IIDOracle(), batch, generator=torch.Generator().manual_seed(3), num_samples=4)
    assert int(count) == int(answer.sum())
    assert first.item() == again.item()
    # changing prompt / padding tokens cannot change what is scored under an iid denoiser
    altered = dict(
        batch, input_ids=torch.where(answer, batch["input_ids"], (batch["input_ids"] + 1) % IID_MASK_ID)
    )
    third, _ = objective.nll(IIDOracle(), altered, generator=torch.Generator().manual_seed(3), num_samples=4)
    assert third.item() == pytest.approx(first.item(), rel=1e-6)


# ------------------------------------------------------------------------------ timestep sampler choice


@pytest.mark.parametrize(
    ("options", "method"),
    [
        ({}, "low_discrepancy"),  # the committed recipes' `antithetic: true`, unchanged
        ({"antithetic": True, "antithetic_sampler": "stratified"}, "stratified"),
        ({"antithetic": False}, "uniform"),
        ({"antithetic": False, "antithetic_sampler": "stratified"}, "uniform"),
    ],
)
def test_antithetic_options_pick_the_timestep_law(monkeypatch, options, method):
    seen = []

    def spy(batch_size, **kwargs):
        seen.append(kwargs["method"])
        return torch.full((batch_size,), 0.5)

    monkeypatch.setattr(masked_module, "sample_timesteps", spy)
    MaskedDiffusionObjective(mask_token_id=MASK_ID, **options)(
        TinyModel(), make_batch(), generator=torch.Generator().manual_seed(0)
    )
    assert seen == [method]


def test_unknown_antithetic_sampler_is_a_clear_error():
    with pytest.raises(ValueError, match="antithetic_sampler.*low_discrepancy, stratified"):
        MaskedDiffusionObjective(mask_token_id=MASK_ID, antithetic_sampler="vdm")
