"""Recipes: validation errors name the key and the nearest valid one; overrides are typed."""

import pytest

from textdiff.config import RecipeError, load_recipe


def test_defaults_and_typed_overrides():
    recipe = load_recipe(None, ["model.hidden_size=64", "trainer.report_to=[]", "data.task_kwargs={max_digits: 2}"])
    assert recipe.model.hidden_size == 64
    assert recipe.trainer.report_to == []
    assert recipe.data.task_kwargs == {"max_digits": 2}


def test_unknown_key_names_the_nearest_valid_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  hiden_size: 3\n")
    with pytest.raises(RecipeError, match=r"unknown recipe key 'model.hiden_size'; did you mean 'model.hidden_size'"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=r"'trainer.learning_rat'; did you mean 'trainer.learning_rate'"):
        load_recipe(None, ["trainer.learning_rat=0.1"])
    with pytest.raises(RecipeError, match=r"unknown recipe key 'modle'; did you mean 'model'"):
        load_recipe(None, ["modle.hidden_size=3"])


def test_mistyped_value_names_the_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("trainer:\n  max_steps: many\n")
    with pytest.raises(RecipeError, match=r"bad value for recipe key 'trainer.max_steps'.*'many'"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="trainer.max_steps"):
        load_recipe(None, ["trainer.max_steps=1.5"])


def test_missing_recipe_and_malformed_override():
    with pytest.raises(FileNotFoundError, match="recipe not found"):
        load_recipe("does/not/exist.yaml")
    with pytest.raises(RecipeError, match="key=value"):
        load_recipe(None, ["trainer.max_steps"])


def test_answer_canvas_must_be_the_decoding_canvas():
    canvas = ["sample.gen_length=16", "sample.block_length=16", "sample.steps=16"]
    recipe = load_recipe(None, ["data.answer_length=16", *canvas])
    assert recipe.data.answer_length == recipe.sample.gen_length == 16
    with pytest.raises(RecipeError, match=r"data.answer_length \(8\) must equal sample.gen_length \(16\)"):
        load_recipe(None, ["data.answer_length=8", *canvas])


def test_every_recipe_passes_validation_at_load():
    """The load-time checks reject no committed recipe (tests/test_recipes.py also trains them; this is the fast
    guard for the validation alone)."""
    from pathlib import Path

    recipes = sorted((Path(__file__).parents[1] / "recipes").rglob("*.yaml"))
    assert recipes
    for path in recipes:
        recipe = load_recipe(path)
        assert recipe.trainer.max_steps >= 1


def test_section_checks_name_key_requirement_and_value(tmp_path):
    with pytest.raises(RecipeError, match=r"^trainer.max_steps must be >= 1 .*, got -5$"):
        load_recipe(None, ["trainer.max_steps=-5"])
    with pytest.raises(RecipeError, match=r"^sample.gen_length 30 is not a multiple of sample.block_length 8$"):
        load_recipe(None, ["sample.gen_length=30", "sample.block_length=8"])
    with pytest.raises(RecipeError, match=r"^model.num_attention_heads must be a multiple of .*\(3\), got 4$"):
        load_recipe(None, ["model.num_key_value_heads=3"])
    path = tmp_path / "r.yaml"
    path.write_text("trainer:\n  max_steps: 10\n\tlearning_rate: 0.1\n")
    with pytest.raises(RecipeError, match=r"r.yaml is not valid YAML: line 3, column 1: .*a tab"):
        load_recipe(path)
