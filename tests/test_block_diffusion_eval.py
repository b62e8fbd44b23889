"""eval/block_diffusion.py's pieces: the bd3 digit_shift recipe is the masked recipe's twin (same trunk, data,
budget), and the "same tokens as no cache" figure compares each cached row with its own model's and rule's
cache-free ids."""

import importlib.util
from dataclasses import asdict
from pathlib import Path

from textdiff.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("block_diffusion", ROOT / "eval" / "block_diffusion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bd3_digit_shift_recipe_is_the_masked_twin():
    bd3 = load_recipe(ROOT / "recipes/bd3/digit_shift_sft.yaml")
    masked = load_recipe(ROOT / "recipes/masked/digit_shift_sft.yaml")
    assert bd3.family == "bd3" and masked.family == "masked"
    assert bd3.model.block_size == 32 and bd3.data.answer_length % 32 == 0 and bd3.sample.block_length % 32 == 0
    for section in ("data", "tokenizer", "trainer", "sample"):
        assert asdict(getattr(bd3, section)) == asdict(getattr(masked, section)), section
    trunk = {k: v for k, v in asdict(bd3.model).items() if k != "block_size"}
    assert trunk == {k: v for k, v in asdict(masked.model).items() if k != "block_size"}


def test_cache_exactness_compares_with_the_same_model_and_rule():
    script = load_script()
    rows = script.settings(["bd3", "masked"])
    assert len(rows) == 12 and all(r.stop_at_eos for r in rows)
    recorder = script.Recorder()
    prompts = [(1, 2), (3, 4)]
    for s in rows:
        ids = [[5, 6], [7, 8]]
        if s.model == "masked" and s.cache == "dual":
            ids[1] = [7, 9]  # one of two problems differs from the cache-free decode
        if s.model == "bd3" and s.sampler == "threshold":
            ids = [[0, 0], [0, 0]]  # differs from low_confidence, but equal across threshold's caches
        recorder.ids[s.name] = dict(zip(prompts, ids))
    report = {"results": [{"name": s.name} for s in rows]}
    script.cache_exactness(report, recorder, rows)
    got = {r["name"]: r["same_tokens_as_no_cache"] for r in report["results"]}
    assert got["masked: low_confidence + dual"] == 0.5 and got["masked: threshold 0.9 + dual"] == 0.5
    assert all(v == 1.0 for name, v in got.items() if "masked" not in name or "dual" not in name)
