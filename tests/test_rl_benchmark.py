"""eval/rl_countdown.py's bookkeeping: merging per-method and per-seed runs, the target decision, standard errors."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("rl_countdown", ROOT / "eval" / "rl_countdown.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_file(tmp_path: Path, name: str, method: str, seed: int, curve: list[float]) -> str:
    run = {
        "overrides": [f"run.output_dir={tmp_path}/gone/{name}", f"run.seed={seed}"],
        "accuracy_curve": [{"step": 100 * i, "accuracy": a, "mean_reward": a} for i, a in enumerate(curve)],
        "accuracy_before": curve[0], "accuracy_after": curve[-1], "best_accuracy": max(curve),
        "gain_points": 100 * (curve[-1] - curve[0]), "seconds_per_step": 1.0,
        "reward_curve": [{"step": 5, "reward": 0.5}, {"step": 10, "reward": 0.6}],
    }
    result = {"command": f"run {name}", "sft_checkpoint": "sft", "steps": 200, "test_problems": 4,
              "methods": {method: run}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(result))
    return str(path)


def test_combine_keeps_every_seed_and_decides_the_target_on_their_mean(bench, tmp_path):
    paths = [
        _run_file(tmp_path, "c0", "coupled", 0, [0.40, 0.55, 0.52]),  # +12
        _run_file(tmp_path, "d0", "d1", 0, [0.40, 0.45, 0.43]),  # +3
        _run_file(tmp_path, "c1", "coupled", 1, [0.40, 0.47, 0.46]),  # +6
    ]
    out = tmp_path / "merged"
    assert bench.combine(paths, out) == 0
    merged = json.loads(out.with_suffix(".json").read_text())
    coupled = merged["methods"]["coupled"]
    assert coupled["seed"] == 0 and [o["seed"] for o in coupled["other_seeds"]] == [1]
    assert coupled["gain_points_per_seed"] == pytest.approx({"0": 12.0, "1": 6.0})
    assert coupled["mean_gain_points"] == pytest.approx(9.0)
    assert merged["target_met"] is False  # seed 0 alone clears +10, the mean over seeds does not
    assert merged["methods"]["d1"]["mean_gain_points"] == pytest.approx(3.0)
    assert merged["sft_standard_error"] == pytest.approx(math.sqrt(0.4 * 0.6 / 4))
    assert out.with_suffix(".png").stat().st_size > 0


def test_combine_refuses_runs_from_different_checkpoints(bench, tmp_path):
    first = _run_file(tmp_path, "a", "coupled", 0, [0.4, 0.5])
    other = json.loads(Path(_run_file(tmp_path, "b", "d1", 0, [0.4, 0.5])).read_text())
    other["sft_checkpoint"] = "another"
    (tmp_path / "b.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="sft_checkpoint differs"):
        bench.combine([first, str(tmp_path / "b.json")], tmp_path / "merged")
