"""The `textdiff` command: info, bad input as one clear line (exit 2), and sampling a saved checkpoint."""

import json

import pytest
import torch

from textdiff.cli import main
from textdiff.data import train_bpe_tokenizer
from textdiff.modeling import TextDiffConfig, TextDiffModel


def test_info_lists_versions_and_families(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "transformers" in out and "textdiff (AutoConfig" in out and "masked" in out


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.corpus=/no/such/corpus.txt"], "/no/such/corpus.txt"),
        (["modle.hidden_size=8"], "did you mean 'model'"),
        (["trainer.max_steps=lots"], "trainer.max_steps"),
        (["data.seq_len=512", "model.max_position_embeddings=256"], "exceeds model.max_position_embeddings"),
    ],
)
def test_train_bad_input_is_one_clear_error(overrides, message, capsys, tmp_path):
    rc = main(["train", "recipes/masked/stdlib_pretrain.yaml", f"run.output_dir={tmp_path}", *overrides])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_sample_from_a_checkpoint(tmp_path, capsys):
    tokenizer = train_bpe_tokenizer(["def f(x):\n    return x\n"] * 20, vocab_size=280, save_dir=tmp_path)
    torch.manual_seed(0)
    model = TextDiffModel(TextDiffConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=64, mask_token_id=tokenizer.mask_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    model.save_pretrained(tmp_path)
    rc = main(["sample", str(tmp_path), "--prompt", "def f", "--gen-length", "8", "--steps", "4",
               "--block-length", "4", "--json"])
    assert rc == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["prompt"] == "def f" and result["nfe"] == 4 and isinstance(result["completion"], str)


def test_sample_show_steps_with_a_parallel_rule_and_cache(tmp_path, capsys):
    tokenizer = train_bpe_tokenizer(["def f(x):\n    return x\n"] * 20, vocab_size=280, save_dir=tmp_path)
    torch.manual_seed(0)
    TextDiffModel(TextDiffConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=64, mask_token_id=tokenizer.mask_token_id, eos_token_id=tokenizer.eos_token_id,
    )).save_pretrained(tmp_path)
    rc = main(["sample", str(tmp_path), "--prompt", "def f", "--gen-length", "8", "--steps", "8", "--block-length",
               "4", "--sampler", "threshold", "--threshold", "1.0", "--cache", "dual", "--show-steps"])
    out = capsys.readouterr().out
    assert rc == 0
    step_lines = [line for line in out.splitlines() if line.startswith("block ")]
    assert len(step_lines) == 8  # threshold 1.0: one token per step
    assert step_lines[0].count("\u2591") == 7 and "\u2591" not in step_lines[-1]


def test_sample_bad_arguments(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err


def test_sample_no_chat_template_encodes_the_raw_prompt(tmp_path, capsys):
    """A checkpoint whose tokenizer has a chat template: by default the prompt is wrapped in it; --no-chat-template
    decodes from the raw prompt, exactly as textdiff.generate on the raw ids does."""
    import textdiff
    from textdiff.pipelines.text import decode_completion

    tokenizer = train_bpe_tokenizer(["def f(x):\n    return x\n"] * 20, vocab_size=280, save_dir=tmp_path)
    tokenizer.chat_template = "{% for m in messages %}user: {{ m['content'] }}\n{% endfor %}assistant:"
    tokenizer.save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = TextDiffModel(TextDiffConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=64, mask_token_id=tokenizer.mask_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    model.save_pretrained(tmp_path)
    args = ["sample", str(tmp_path), "--prompt", "def f", "--gen-length", "8", "--steps", "8", "--block-length", "8",
            "--json"]
    raw_ids = torch.tensor([tokenizer("def f", add_special_tokens=False)["input_ids"]])
    sequence = textdiff.generate(model.eval(), raw_ids, gen_length=8, steps=8, block_length=8).sequences[0]
    expected = decode_completion(tokenizer, sequence[raw_ids.shape[1]:].tolist(), model.config.mask_token_id)
    assert main(args + ["--no-chat-template"]) == 0
    (raw,) = json.loads(capsys.readouterr().out)
    assert raw["completion"] == expected
