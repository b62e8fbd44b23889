"""The plug-in point is real: a family defined entirely under tests/ (tests/toy_family.py: options, builder,
objective, sampler, pipeline) trains and samples through `textdiff train` / `textdiff sample` from a recipe that
names it by module path, with no edit under textdiff/."""

import json
from pathlib import Path

from textdiff.cli import main
from textdiff.config import load_recipe
from textdiff.families import FAMILIES

RECIPE = """\
# textdiff train THIS_FILE
family: tests.toy_family
run:
  output_dir: {out}
model:
  hidden_size: 32
  num_hidden_layers: 2
  num_attention_heads: 4
objective:
  modulus: 12
  noise: 0.8
trainer:
  max_steps: 2
  per_device_train_batch_size: 8
  per_device_eval_batch_size: 32
  warmup_steps: 0
  eval_steps: null
  save_steps: null
  report_to: []
"""


def test_a_family_from_outside_trains_and_samples_through_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE.format(out=out))

    assert main(["train", str(recipe)]) == 0
    printed = capsys.readouterr().out
    assert "toy: valid nats/token" in printed  # the family's own summary
    results = json.loads((out / "results.json").read_text())
    assert results["family"] == "tests.toy_family" and results["config"]["objective"]["modulus"] == 12
    assert results["final_eval"]["eval_tokens"] == 11 * 8  # the 11 progressions starting at 0, 8 tokens each
    assert results["log_history"][-1]["step"] == 2  # trained exactly trainer.max_steps
    saved = json.loads((out / "final" / "config.json").read_text())
    assert saved["textdiff_family"] == "tests.toy_family" and saved["vocab_size"] == 12

    assert main(["sample", str(out / "final"), "--prompt", "3,5", "--steps", "4"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    tokens = [int(v) for v in line.split("-> ")[1].split(",")]
    assert line.startswith("toy: 3,5 ->") and tokens[:2] == [3, 5] and len(tokens) == 8
    assert all(0 <= v < 12 for v in tokens)


def test_the_family_options_are_the_objective_schema(tmp_path, capsys):
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / "run"))
    loaded = load_recipe(recipe, ["objective.length=6"])
    assert type(loaded.objective).__name__ == "ToyOptions" and loaded.objective.length == 6
    assert "toy" in FAMILIES
    # a masked option is not an option of the toy family, and the toy options check themselves at load
    assert main(["train", str(recipe), "objective.schedule=cosine"]) == 2
    assert "unknown recipe key 'objective.schedule' of family toy" in capsys.readouterr().err
    assert main(["train", str(recipe), "objective.noise=0"]) == 2
    assert "noise must be in (0, 1], got 0" in capsys.readouterr().err
    assert not Path(tmp_path / "run").exists()
