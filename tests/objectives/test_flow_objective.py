"""Rectified-flow objective: the loss is the velocity MSE at x_sigma = (1 - sigma) x0 + sigma eps, captions are
dropped by masking, and the validation loss is deterministic under a fixed generator."""

import pytest
import torch

from textdiff.objectives.flow import FlowMatchingObjective, drop_captions
from textdiff.schedules import sample_flow_sigmas


class Recorder(torch.nn.Module):
    """Predicts a fixed velocity and records its inputs."""

    def __init__(self, prediction=None):
        super().__init__()
        self.prediction, self.calls = prediction, []

    def forward(self, x, t, **cond):
        self.calls.append((x.clone(), t.clone(), {k: v.clone() for k, v in cond.items()}))
        out = torch.zeros_like(x) if self.prediction is None else self.prediction

        class Out:
            sample = out

        return Out()


def batch(B=4):
    g = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.rand(B, 1, 4, 4, generator=g) * 2 - 1,
            "encoder_hidden_states": torch.randn(B, 3, 5, generator=g),
            "encoder_attention_mask": torch.ones(B, 3, dtype=torch.long), "pooled_text": torch.randn(B, 5, generator=g)}


def test_training_loss_is_velocity_mse_on_the_flow_path():
    objective = FlowMatchingObjective(cond_drop_prob=0.0)
    assert isinstance(objective, FlowMatchingObjective)
    model, b = Recorder(), batch()
    torch.manual_seed(3)
    out = objective(model, b)
    torch.manual_seed(3)
    sigmas = sample_flow_sigmas(4, scheme="logit_normal")
    noise = torch.randn_like(b["pixel_values"])
    x, t, cond = model.calls[0]
    s = sigmas.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(t, sigmas)
    torch.testing.assert_close(x, (1 - s) * b["pixel_values"] + s * noise)
    expected = (noise - b["pixel_values"]).pow(2).flatten(1).mean(1).mean()  # the model predicted 0
    torch.testing.assert_close(out.loss, expected)
    assert torch.equal(cond["encoder_attention_mask"], b["encoder_attention_mask"])


def test_caption_dropout_masks_the_text_and_zeroes_the_pooled_embedding():
    b = batch()
    dropped = drop_captions(b, torch.tensor([True, False, True, False]))
    assert dropped["encoder_attention_mask"].sum(1).tolist() == [0, 3, 0, 3]
    assert dropped["pooled_text"][0].abs().sum() == 0 and torch.equal(dropped["pooled_text"][1], b["pooled_text"][1])
    objective = FlowMatchingObjective(cond_drop_prob=1.0)
    model = Recorder()
    objective(model, b)
    assert model.calls[0][2]["encoder_attention_mask"].sum() == 0


def test_drop_rate_is_about_ten_percent():
    objective, model = FlowMatchingObjective(cond_drop_prob=0.1), Recorder()
    torch.manual_seed(0)
    for _ in range(200):
        objective(model, batch(16))
    rate = sum(int((c[2]["encoder_attention_mask"].sum(1) == 0).sum()) for c in model.calls) / (200 * 16)
    assert rate == pytest.approx(0.1, abs=0.02)


def test_validation_loss_is_deterministic_and_counts_samples():
    objective, b = FlowMatchingObjective(), batch()
    first = objective.nll(Recorder(), b, generator=torch.Generator().manual_seed(1), num_samples=3)
    second = objective.nll(Recorder(), b, generator=torch.Generator().manual_seed(1), num_samples=3)
    assert torch.equal(first[0], second[0]) and int(first[1]) == 4


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="timestep_sampling"):
        FlowMatchingObjective(timestep_sampling="beta")
    with pytest.raises(ValueError, match="weighting"):
        FlowMatchingObjective(weighting="snr")
    with pytest.raises(ValueError, match="pixel_values"):
        FlowMatchingObjective()(Recorder(), {"input_ids": torch.zeros(1, 2)})
