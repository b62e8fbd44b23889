"""textdiff.evaluation.bench and `textdiff bench`: the settings grid, round-robin timing with rotated order,
NFE accounting, batching equal to one-at-a-time decoding, the Pareto front, and the command's JSON / md / PNG."""

from __future__ import annotations

import json

import pytest
import torch

from textdiff import TextDiffConfig, TextDiffModel
from textdiff.cli import main
from textdiff.data.tasks import get_task
from textdiff.data.tokenizers import train_bpe_tokenizer
from textdiff.evaluation.bench import Setting, pareto_front, run_benchmark, settings_grid

GEN = 8


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    task = get_task("arithmetic")
    texts = [f"{p.prompt} {p.answer}" for p in task.generate(200, "train", 0)]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, save_dir=root / "tok")
    paths = {}
    for name, mode in (("masked", "bidirectional"), ("ar", "causal")):
        torch.manual_seed(0)
        model = TextDiffModel(TextDiffConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, max_position_embeddings=64, attention_mode=mode,
                                             mask_token_id=tokenizer.mask_token_id, block_size=4,
                                             eos_token_id=tokenizer.eos_token_id)).eval()
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths[name] = (root / name, model)
    return paths, tokenizer


def test_pareto_front_by_hand():
    points = [(1.0, 50.0), (2.0, 40.0), (3.0, 40.0), (0.5, 60.0), (3.0, 10.0), (0.4, 55.0)]
    assert pareto_front(points) == [(0.5, 60.0), (1.0, 50.0), (3.0, 40.0)]


def test_settings_grid_names_and_bad_input():
    grid = settings_grid(["low_confidence", "threshold"], ["none", "dual"], gen_length=32, block_length=32)
    assert [s.name for s in grid] == ["low_confidence", "low_confidence + dual", "threshold 0.9",
                                      "threshold 0.9 + dual"]
    assert grid[3].options == {"threshold": 0.9} and grid[3].cache == "dual"
    with pytest.raises(ValueError, match="unknown rule 'lowconf'"):
        settings_grid(["lowconf"], ["none"], gen_length=32, block_length=32)
    with pytest.raises(ValueError, match="unknown cache mode 'full'"):
        settings_grid(["random"], ["full"], gen_length=32, block_length=32)
    with pytest.raises(ValueError, match="not a multiple of block_length"):
        settings_grid(["random"], ["none"], gen_length=30, block_length=32)


def test_round_robin_nfe_and_batching(checkpoints):
    paths, tokenizer = checkpoints
    masked, ar = paths["masked"][1], paths["ar"][1]
    task = get_task("arithmetic")
    problems = task.generate(4, "test", 0)
    calls = []

    def spy(setting, model, tok, rows, *, gen_length, block_length):  # a caller's own decoder: records the order
        calls.append(setting.name)
        return [[tok.eos_token_id] * gen_length for _ in rows], 1.0

    settings = [*settings_grid(["low_confidence", "threshold"], ["none"], gen_length=GEN, block_length=GEN),
                Setting(name="spy", decoder="spy"), Setting(name="AR", model="ar", decoder="ar")]
    models = {"masked": (masked, tokenizer), "ar": (ar, tokenizer)}
    one = run_benchmark(settings, task, problems, models, gen_length=GEN, block_length=GEN, decoders={"spy": spy},
                        progress=False)
    rows = {r["name"]: r for r in one["results"]}
    assert rows["low_confidence"]["nfe_per_problem"] == GEN  # one token per step, one pass per step
    assert rows["threshold 0.9"]["nfe_per_problem"] <= GEN
    assert rows["AR"]["nfe_per_problem"] == GEN  # prefill + gen - 1 cached steps, no EOS stop
    assert rows["low_confidence"]["agreement_with_baseline"] == 1.0 and one["baseline"] == "low_confidence"
    assert all(r["tokens_per_s"] > 0 and 0 <= r["accuracy"] <= 1 for r in one["results"])
    # warm-up once, then one decode per batch (4 batches of 1)
    assert len(calls) == 5
    assert rows["spy"]["speedup_vs_baseline"] == pytest.approx(rows["low_confidence"]["seconds_per_problem"]
                                                               / rows["spy"]["seconds_per_problem"])
    # a left-padded batch decodes exactly as one problem at a time
    two = run_benchmark(settings[:1], task, problems, models, gen_length=GEN, block_length=GEN, batch_size=3,
                        progress=False, max_examples=4)
    one_lc = run_benchmark(settings[:1], task, problems, models, gen_length=GEN, block_length=GEN, progress=False,
                           max_examples=4)
    assert two["results"][0]["examples"] == one_lc["results"][0]["examples"]
    assert two["results"][0]["nfe_per_problem"] == GEN
    with pytest.raises(ValueError, match="decodes with model 'ar', not among"):
        run_benchmark(settings[-1:], task, problems, {"masked": (masked, tokenizer)}, gen_length=GEN,
                      block_length=GEN)


def test_rotation_order():
    """Batch b starts at setting b mod n: no setting always runs right after the same one."""
    from textdiff.data.tasks import Problem

    class Echo:
        name = "echo"

        def verify(self, problem, completion):
            return True

    order = []

    def record(setting, model, tok, rows, *, gen_length, block_length):
        order.append(setting.name)
        return [[0] * gen_length for _ in rows], 1.0

    model = TextDiffModel(TextDiffConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                         max_position_embeddings=16, mask_token_id=7))

    class Tok:
        eos_token_id, pad_token_id, chat_template = 0, 0, None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1]}

        def decode(self, ids):
            return ""

    settings = [Setting(name=n, decoder="rec") for n in "abc"]
    problems = [Problem(prompt="p", answer="a", meta={"key": str(i)}) for i in range(3)]
    run_benchmark(settings, Echo(), problems, {"masked": (model, Tok())}, gen_length=2, block_length=2,
                  decoders={"rec": record}, warmup=False, progress=False)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_bench_command_writes_json_md_png(checkpoints, tmp_path, capsys):
    paths, _ = checkpoints
    out = tmp_path / "bench"
    rc = main(["bench", str(paths["masked"][0]), "--ar", str(paths["ar"][0]), "--task", "arithmetic", "--problems",
               "2", "--rules", "low_confidence,threshold", "--caches", "none,dual", "--gen-length", str(GEN),
               "--block-length", str(GEN), "--out", str(out)])
    assert rc == 0
    report = json.loads(out.with_suffix(".json").read_text())
    names = [r["name"] for r in report["results"]]
    assert names == ["low_confidence", "low_confidence + dual", "threshold 0.9", "threshold 0.9 + dual",
                     f"AR greedy + KV cache ({GEN} tokens)", "AR greedy + KV cache (stop at EOS)"]
    assert report["problems"] == 2 and report["task"] == "arithmetic" and report["command"].startswith("textdiff bench")
    table = out.with_suffix(".md").read_text()
    assert all(f"| {name} |" in table for name in names)
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "threshold 0.9 + dual" in capsys.readouterr().out

    capsys.readouterr()
    assert main(["bench", str(paths["ar"][0]), "--task", "arithmetic"]) == 2
    assert "is a causal (AR) checkpoint" in capsys.readouterr().err
    assert main(["bench", str(paths["masked"][0]), "--task", "arithmetic", "--rules", "fastest"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("textdiff bench: error: unknown rule 'fastest'")
