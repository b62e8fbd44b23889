"""DiffusionTrainer: objective-driven loss, ELBO evaluation, NaN guard, atomic checkpoints, exact resume."""

import math
import os

import datasets
import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from textdiff.data import PackedCollator
from textdiff.objectives import AutoregressiveObjective, MaskedDiffusionObjective
from textdiff.train.trainer import DiffusionTrainer


def token_dataset(n=48, length=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a learnable source: each row counts upward from a random start
    starts = torch.randint(0, 40, (n, 1), generator=g)
    rows = (starts + torch.arange(length)) % 60
    return datasets.Dataset.from_dict({"input_ids": rows.tolist()})


def make_trainer(model, tmp_path, objective, *, max_steps=6, save_steps=None, callbacks=None, lr=3e-3):
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=8, per_device_eval_batch_size=16,
        learning_rate=lr, logging_steps=1, save_strategy="steps" if save_steps else "no", save_steps=save_steps or 1,
        report_to=[], remove_unused_columns=False, label_names=[], use_cpu=True, seed=0, disable_tqdm=True,
    )
    return DiffusionTrainer(
        model=model, args=args, train_dataset=token_dataset(), eval_dataset=token_dataset(16, seed=1),
        data_collator=PackedCollator(), objective=objective, elbo_samples=2, callbacks=callbacks,
    )


def losses(history):
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def test_training_reduces_the_masked_elbo(tiny_model_factory, tmp_path):
    model = tiny_model_factory().train()
    trainer = make_trainer(model, tmp_path, MaskedDiffusionObjective(mask_token_id=66), max_steps=30)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"]
    assert after["eval_ppl"] == pytest.approx(math.exp(after["eval_loss"]))
    assert after["eval_bits_per_token"] == pytest.approx(after["eval_loss"] / math.log(2))
    assert after["eval_tokens"] == 16 * 16


def test_evaluation_is_deterministic(tiny_model_factory, tmp_path):
    trainer = make_trainer(tiny_model_factory(), tmp_path, MaskedDiffusionObjective(mask_token_id=66))
    assert trainer.evaluate()["eval_loss"] == trainer.evaluate()["eval_loss"]


def test_ar_evaluation_is_the_exact_nll(tiny_model_factory, tmp_path):
    model = tiny_model_factory(attention_mode="causal")
    trainer = make_trainer(model, tmp_path, AutoregressiveObjective())
    ids = torch.tensor(token_dataset(16, seed=1)["input_ids"])
    logp = torch.log_softmax(model(ids).logits[:, :-1], -1).gather(-1, ids[:, 1:, None])
    assert trainer.evaluate()["eval_loss"] == pytest.approx(-logp.mean().item(), rel=1e-5)


def test_objective_and_model_mode_must_agree(tiny_model_factory, tmp_path):
    with pytest.raises(ValueError, match="attention_mode"):
        make_trainer(tiny_model_factory(), tmp_path, AutoregressiveObjective())


def test_nan_loss_is_a_clear_error(tiny_model_factory, tmp_path):
    model = tiny_model_factory().train()
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    trainer = make_trainer(model, tmp_path, MaskedDiffusionObjective(mask_token_id=66))
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        trainer.train()


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_reproduces_the_uninterrupted_loss_curve(tiny_model_factory, tmp_path):
    objective = MaskedDiffusionObjective(mask_token_id=66, antithetic=True)
    full = make_trainer(tiny_model_factory().train(), tmp_path / "full", objective, max_steps=6)
    full.train()
    expected = losses(full.state.log_history)

    interrupted = make_trainer(tiny_model_factory().train(), tmp_path / "cut", objective, max_steps=6, save_steps=3,
                               callbacks=[StopAt(3)])
    interrupted.train()
    checkpoint = tmp_path / "cut" / "checkpoint-3"
    assert checkpoint.is_dir() and not (tmp_path / "cut" / ".staging" / "checkpoint-3").exists()
    assert (checkpoint / "model.safetensors").exists()

    torch.manual_seed(12345)  # a different global RNG state: resume must restore the saved one
    resumed = make_trainer(tiny_model_factory().train(), tmp_path / "cut", objective, max_steps=6, save_steps=3)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    got = losses(resumed.state.log_history)
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(expected[step], rel=1e-5), (step, got, expected)
    assert sorted(os.listdir(tmp_path / "cut")) == ["checkpoint-3", "checkpoint-6"]
