"""The same recipe runs under DeepSpeed ZeRO-2 / ZeRO-3 (one process; the first run JIT-compiles DeepSpeed's
shm_comm op, ~45 s, hence slow). Each run is a subprocess so DeepSpeed's process group stays out of pytest."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
TINY = [
    "model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2", "tokenizer.vocab_size=300",
    "data.num_train_examples=64", "data.num_valid_examples=8", "trainer.max_steps=3", "trainer.logging_steps=1",
    "trainer.per_device_train_batch_size=4", "trainer.eval_steps=null", "trainer.save_steps=null",
    "trainer.report_to=[]", "eval.elbo_samples=1", "sample.prompts=[]",
]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_recipe_trains_under_deepspeed(stage, tmp_path):
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "textdiff.cli", "train", "recipes/masked/arithmetic_sft.yaml", *TINY,
           f"run.output_dir={tmp_path}", f"trainer.deepspeed={stage}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["engine"] == "DeepSpeedEngine"
    assert results["deepspeed_config"].endswith(f"{stage}.json")
    losses = [h["loss"] for h in results["log_history"] if "loss" in h]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "final" / "model.safetensors")
    assert weights["embed_tokens.weight"].shape[1] == 32  # gathered, not a ZeRO-3 shard
