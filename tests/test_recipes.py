"""Every recipe under recipes/ (found recursively) loads and trains 2 steps at tiny size, end to end."""

import json
from pathlib import Path

import pytest

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


def test_recipes_exist():
    assert len(RECIPES) >= 3


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_recipe_opens_with_its_command_and_trains_two_steps(path, tmp_path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# textdiff ") and path.name in first_line, "recipes open with their command"
    # chained recipes (model.init_from = an earlier recipe's output) start from a random tiny model here
    recipe = load_recipe(path, TINY + [f"run.output_dir={tmp_path}", "model.init_from=null"])
    results = train_from_recipe(recipe, recipe_path=str(path))
    assert results["final_eval"]["eval_loss"] > 0
    assert (tmp_path / "final" / "model.safetensors").exists()
    assert json.loads((tmp_path / "results.json").read_text())["final_eval"] == results["final_eval"]
    steps = [h["step"] for h in results["log_history"] if "loss" in h]
    assert steps == [1, 2]
    if recipe.data.task:
        assert results["task_eval"]["problems"] == 4 and 0 <= results["task_eval"]["accuracy"] <= 1
