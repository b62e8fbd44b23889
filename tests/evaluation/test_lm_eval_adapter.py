"""lm_eval runs a local textdiff task end to end on a tiny checkpoint (offline)."""

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")


def test_simple_evaluate_runs_local_task(tmp_path):
    import textdiff.evaluation.lm_eval_adapter  # noqa: F401  (registers the "textdiff" model)
    from lm_eval.tasks import TaskManager

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
                                  task_manager=TaskManager(include_path=str(LM_EVAL_TASKS_DIR)))
    result = out["results"]["textdiff_arithmetic"]
    assert 0.0 <= result["accuracy,none"] <= 1.0 and result["sample_len"] == 3
