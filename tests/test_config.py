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
    recipe = load_recipe(None, ["data.answer_length=16", "sample.gen_length=16"])
    assert recipe.data.answer_length == recipe.sample.gen_length == 16
    with pytest.raises(RecipeError, match=r"data.answer_length \(8\) must equal sample.gen_length \(16\)"):
        load_recipe(None, ["data.answer_length=8", "sample.gen_length=16"])
