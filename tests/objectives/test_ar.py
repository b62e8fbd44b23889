import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from textdiff.objectives import AutoregressiveObjective

VOCAB = 9


class TinyCausalModel(nn.Module):
    """Stand-in causal LM: logits at i depend on tokens <= i (embedding + prefix mean + linear)."""

    def __init__(self, dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, dim)
        self.head = nn.Linear(dim, VOCAB)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(VOCAB, dim, generator=generator))
            self.head.weight.copy_(torch.randn(VOCAB, dim, generator=generator))
            self.head.bias.copy_(torch.randn(VOCAB, generator=generator))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        hidden = self.embed(input_ids)  # [B, L, D]
        steps = torch.arange(1, input_ids.shape[1] + 1)[None, :, None]  # [1, L, 1]
        prefix_mean = hidden.cumsum(dim=1) / steps  # [B, L, D]
        return SimpleNamespace(logits=self.head(torch.tanh(hidden + prefix_mean)))  # [B, L, V]


def loop_next_token_nll(logits, input_ids, scored_target):
    """Sum over scored targets j >= 1 of -log softmax(logits[b, j-1])[input_ids[b, j]], in python loops."""
    total, count = 0.0, 0
    for b in range(input_ids.shape[0]):
        for j in range(1, input_ids.shape[1]):
            if not scored_target(b, j):
                continue
            row = [float(v) for v in logits[b, j - 1]]
            top = max(row)
            log_partition = top + math.log(sum(math.exp(v - top) for v in row))
            total += log_partition - row[int(input_ids[b, j])]
            count += 1
    return total, count


def make_batch():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (3, 10), generator=generator)
    attention_mask = torch.ones(3, 10, dtype=torch.long)
    attention_mask[1, -4:] = 0  # right padding
    attention_mask[2, :3] = 0  # left padding
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def test_loss_equals_manual_shifted_ce():
    model = TinyCausalModel()
    input_ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    out = AutoregressiveObjective()(model, {"input_ids": input_ids})
    total, count = loop_next_token_nll(model(input_ids).logits.detach(), input_ids, lambda b, j: True)
    assert count == 2 * 6
    assert out.loss.item() == pytest.approx(total / count, rel=1e-5)
    out.loss.backward()
    assert model.head.weight.grad.abs().sum() > 0


def test_padding_is_ignored():
    model = TinyCausalModel()
    batch = make_batch()
    real = batch["attention_mask"].bool()
    objective = AutoregressiveObjective()
    out = objective(model, batch)
    logits = model(batch["input_ids"]).logits.detach()
    total, count = loop_next_token_nll(
        logits, batch["input_ids"], lambda b, j: bool(real[b, j] and real[b, j - 1])
    )
    assert out.loss.item() == pytest.approx(total / count, rel=1e-5)
    nll, num_scored = objective.nll(model, batch)
    assert int(num_scored) == count and nll.item() == pytest.approx(total, rel=1e-5)

    # changing the tokens under padding changes no scored prediction of a right-padded row...
    altered = batch["input_ids"].clone()
    altered[1, -4:] = (altered[1, -4:] + 1) % VOCAB
    right_only = {"input_ids": altered[:2], "attention_mask": batch["attention_mask"][:2]}
    original = {"input_ids": batch["input_ids"][:2], "attention_mask": batch["attention_mask"][:2]}
    assert objective(model, right_only).loss.item() == pytest.approx(objective(model, original).loss.item())


def test_prompt_targets_are_not_scored():
    model = TinyCausalModel()
    batch = make_batch()
    prompt_mask = torch.zeros(3, 10, dtype=torch.bool)
    prompt_mask[:, :5] = True
    batch["prompt_mask"] = prompt_mask
    real = batch["attention_mask"].bool()
    out = AutoregressiveObjective()(model, batch)
    logits = model(batch["input_ids"]).logits.detach()
    total, count = loop_next_token_nll(
        logits, batch["input_ids"], lambda b, j: bool(real[b, j] and real[b, j - 1] and not prompt_mask[b, j])
    )
    assert out.loss.item() == pytest.approx(total / count, rel=1e-5)
    assert out.logs["scored_tokens"] == count


def test_build_and_attention_mode():
    objective = AutoregressiveObjective()
    assert isinstance(objective, AutoregressiveObjective)
    assert objective.attention_mode == "causal"
    objective.check_attention_mode("causal")
    with pytest.raises(ValueError, match="bidirectional"):
        objective.check_attention_mode("bidirectional")
