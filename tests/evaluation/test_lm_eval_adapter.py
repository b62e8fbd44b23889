"""lm_eval runs a local textdiff task end to end on a tiny checkpoint (offline)."""

import lm_eval
import pytest
import torch


def test_simple_evaluate_runs_local_task(tmp_path):
    from lm_eval.tasks import TaskManager

    import textdiff.evaluation.lm_eval_adapter  # noqa: F401  (registers the "textdiff" model)
    from textdiff import TextDiffConfig, TextDiffModel
    from textdiff.data.tokenizers import train_bpe_tokenizer
    from textdiff.evaluation import LM_EVAL_TASKS_DIR

    tok = train_bpe_tokenizer(["Compute 3+5. 8\n", "Compute 12*3. 36\n"] * 20, vocab_size=280, save_dir=tmp_path)
    torch.manual_seed(0)
    TextDiffModel(TextDiffConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 max_position_embeddings=64, mask_token_id=tok.mask_token_id,
                                 eos_token_id=tok.eos_token_id)).save_pretrained(tmp_path)
    out = lm_eval.simple_evaluate(model="textdiff", model_args=f"pretrained={tmp_path},mc_num=8,batch_size=4",
                                  tasks=["textdiff_arithmetic"], limit=3,
                                  task_manager=TaskManager(include_path=str(LM_EVAL_TASKS_DIR), include_defaults=False))
    result = out["results"]["textdiff_arithmetic"]
    assert 0.0 <= result["accuracy,none"] <= 1.0 and result["sample_len"] == 3


@pytest.mark.slow  # ~25 s: a fresh interpreter imports lm_eval and its task registry
def test_lm_eval_command_line_runs_the_local_task(tmp_path):
    """The documented command: lm_eval's own CLI, with the textdiff model type registered, offline end to end."""
    import json
    import os
    import subprocess
    import sys

    from textdiff import TextDiffConfig, TextDiffModel
    from textdiff.data.tokenizers import train_bpe_tokenizer
    from textdiff.evaluation import LM_EVAL_TASKS_DIR

    ckpt = tmp_path / "ckpt"
    tok = train_bpe_tokenizer(["Compute 3+5. 8\n", "Compute 12*3. 36\n"] * 20, vocab_size=280, save_dir=ckpt)
    torch.manual_seed(0)
    TextDiffModel(TextDiffConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 max_position_embeddings=64, mask_token_id=tok.mask_token_id,
                                 eos_token_id=tok.eos_token_id)).save_pretrained(ckpt)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "textdiff.evaluation.lm_eval_cli", "--model", "textdiff", "--model_args",
         f"pretrained={ckpt},mc_num=8", "--batch_size", "4", "--tasks", "textdiff_arithmetic", "--limit", "2",
         "--include_path", str(LM_EVAL_TASKS_DIR), "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [result_file] = list((tmp_path / "out").rglob("results*.json"))
    result = json.loads(result_file.read_text())["results"]["textdiff_arithmetic"]
    assert result["sample_len"] == 2 and 0.0 <= result["accuracy,none"] <= 1.0
