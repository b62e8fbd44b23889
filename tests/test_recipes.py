"""Every recipe under recipes/ (found recursively) loads and trains 2 steps at tiny size, end to end."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from textdiff.config import load_recipe
from textdiff.train.run import train_from_recipe

RECIPES = sorted((Path(__file__).parents[1] / "recipes").rglob("*.yaml"))
TINY = [
    "model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2",
    "model.num_key_value_heads=1", "model.intermediate_size=64", "tokenizer.vocab_size=300",
    "data.seq_len=32", "data.max_valid_blocks=4", "data.num_train_examples=64", "data.num_valid_examples=8",
    "trainer.max_steps=2", "trainer.logging_steps=1", "trainer.per_device_train_batch_size=4", "trainer.eval_steps=null",
    "trainer.save_steps=null", "trainer.report_to=[]", "eval.elbo_samples=1", "eval.task_problems=4",
    "sample.gen_length=8", "sample.steps=8", "sample.block_length=8",
]


def _tiny(path: Path) -> list[str]:
    """TINY, with the answer canvas of fixed-canvas recipes (data.answer_length) at 16 tokens, room for the longest
    digit-tokenized countdown answer plus EOS; sample.gen_length must equal it."""
    data = OmegaConf.load(path).get("data", {})
    # digit_shift's answer is as long as its digit string: 8 digits fit the tiny canvas
    task = ["data.task_kwargs.n_digits=8"] if data.get("task") == "digit_shift" else []
    # block diffusion: blocks that divide the tiny canvas (16) and the tiny block length
    task += ["model.block_size=8"] if OmegaConf.load(path).get("family") == "bd3" else []
    if not data.get("answer_length"):
        return TINY + task
    return TINY + task + ["data.answer_length=16", "sample.gen_length=16", "sample.steps=16", "sample.block_length=16"]


def test_recipes_exist():
    assert len(RECIPES) >= 3


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_recipe_opens_with_its_command_and_trains_two_steps(path, tmp_path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# textdiff ") and path.name in first_line, "recipes open with their command"
    if first_line.startswith("# textdiff rl "):
        return _rl_recipe_trains_two_steps(path, tmp_path)
    # chained recipes (model.init_from = an earlier recipe's output) start from a random tiny model here
    overrides = _tiny(path) + [f"run.output_dir={tmp_path}", "model.init_from=null"]
    recipe = load_recipe(path, overrides)
    results = train_from_recipe(recipe, recipe_path=str(path))
    assert results["final_eval"]["eval_loss"] > 0
    assert (tmp_path / "final" / "model.safetensors").exists()
    assert json.loads((tmp_path / "results.json").read_text())["final_eval"] == results["final_eval"]
    steps = [h["step"] for h in results["log_history"] if "loss" in h]
    assert steps == [1, 2]
    if recipe.data.task:
        assert results["task_eval"]["problems"] == 4 and 0 <= results["task_eval"]["accuracy"] <= 1


def _rl_recipe_trains_two_steps(path, tmp_path):
    """RL recipes (`textdiff rl`): a tiny 2-step SFT checkpoint of the chain's SFT recipe stands in for rl.init_from."""
    from textdiff.rl.run import rl_from_recipe

    sft_path = Path(__file__).parents[1] / "recipes" / "masked" / "countdown_sft.yaml"
    assert sft_path.name in path.read_text(), "RL recipes document the SFT recipe they start from"
    train_from_recipe(load_recipe(sft_path, _tiny(sft_path) + [f"run.output_dir={tmp_path / 'sft'}"]))
    recipe = load_recipe(path, [
        f"run.output_dir={tmp_path / 'rl'}", f"rl.init_from={tmp_path / 'sft' / 'final'}", "rl.num_generations=2",
        "rl.gen_length=16", "rl.diffusion_steps=16", "rl.eval_steps=null", "data.num_train_examples=16",
        "eval.task_problems=4", "trainer.max_steps=2", "trainer.logging_steps=1", "trainer.per_device_train_batch_size=4",
        "trainer.save_steps=null", "trainer.report_to=[]", "sample.gen_length=16", "sample.steps=16",
        "sample.block_length=16",
    ])
    results = rl_from_recipe(recipe, recipe_path=str(path))
    assert (tmp_path / "rl" / "final" / "model.safetensors").exists()
    assert [h["step"] for h in results["log_history"] if "loss" in h] == [1, 2]
    assert [c["step"] for c in results["accuracy_curve"]] == [0, 2]
    assert all(0 <= c["accuracy"] <= 1 for c in results["accuracy_curve"])
