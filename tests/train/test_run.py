"""train_from_recipe wiring: starting from a checkpoint whose tokenizer has no [MASK] and no spare row."""

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from textdiff.config import load_recipe
from textdiff.modeling import TextDiffConfig, TextDiffModel
from textdiff.train.run import train_from_recipe


def test_init_from_a_checkpoint_without_room_for_mask_is_a_clear_error(tmp_path):
    vocab = {str(i): i for i in range(10)} | {"Compute": 10, "+": 11, "-": 12, "*": 13, ".": 14, "<eos>": 15}
    raw = Tokenizer(WordLevel(vocab, unk_token="<eos>"))
    raw.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<eos>")
    ckpt = tmp_path / "ckpt"
    tokenizer.save_pretrained(ckpt)
    TextDiffModel(TextDiffConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(ckpt)
    recipe = load_recipe("recipes/masked/arithmetic_sft.yaml", [f"model.init_from={ckpt}", f"run.output_dir={tmp_path}/run",
                                                                 "trainer.max_steps=1", "trainer.report_to=[]"])
    with pytest.raises(ValueError, match=r"no room for \[MASK\]"):
        train_from_recipe(recipe)


def test_scheduler_kwargs_reach_the_trainer_and_wsd_extends_a_constant_run(tmp_path):
    """`trainer.lr_scheduler_kwargs` gets to TrainingArguments; warmup_stable_decay equals constant_with_warmup
    until its decay starts, so a constant-lr checkpoint resumes into it exactly (the countdown SFT recipe)."""
    import torch
    from transformers.optimization import get_scheduler

    from textdiff.train.run import training_arguments

    def lrs(overrides):
        recipe = load_recipe("recipes/masked/countdown_sft.yaml", [f"run.output_dir={tmp_path}", *overrides])
        args = training_arguments(recipe)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
        sched = get_scheduler(args.lr_scheduler_type, opt, num_warmup_steps=args.warmup_steps,
                              num_training_steps=args.max_steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        return [sched.lr_lambdas[0](step) * args.learning_rate for step in range(args.max_steps + 1)]

    wsd = lrs(["trainer.max_steps=1200", "trainer.lr_scheduler_type=warmup_stable_decay",
               "trainer.lr_scheduler_kwargs={num_decay_steps: 300}"])
    constant = lrs(["trainer.max_steps=1200", "trainer.lr_scheduler_type=constant_with_warmup"])
    assert wsd[:901] == pytest.approx(constant[:901])  # warmup 100, then flat at the peak through step 900
    assert wsd[1050] == pytest.approx(constant[1050] / 2)  # cosine decay: half way down at the middle
    assert wsd[1200] == 0.0
    assert all(a >= b for a, b in zip(wsd[900:], wsd[901:]))
