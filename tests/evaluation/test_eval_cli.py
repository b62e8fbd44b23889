"""`textdiff eval CKPT` on a tiny checkpoint trained a few steps: the report's figures equal the metrics computed
directly, the run's recipe gives the defaults, and bad input is one line naming the problem."""

from __future__ import annotations

import json
import math
import shutil
import sysconfig
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

from textdiff.cli import main
from textdiff.evaluation.metrics import distinct_n, generative_perplexity, self_bleu
from textdiff.evaluation.run import ast_parse_fraction, corpus_likelihood

STDLIB_FILES = ("textwrap.py", "bisect.py", "colorsys.py", "keyword.py", "fnmatch.py", "glob.py", "shlex.py",
                "heapq.py", "abc.py", "genericpath.py", "string.py", "this.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A masked run trained 3 steps on a dozen stdlib files (as text), and a tiny random Llama judge over its
    tokenizer."""
    root = tmp_path_factory.mktemp("eval")
    corpus = root / "corpus"
    corpus.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in STDLIB_FILES:
        shutil.copy(stdlib / name, corpus / name.replace(".py", ".txt"))
    rc = main(["train", "recipes/masked/stdlib_quickstart.yaml", f"data.corpus={corpus}", f"run.output_dir={root}/run",
               "tokenizer.vocab_size=300", "model.hidden_size=32", "model.num_hidden_layers=1",
               "model.num_attention_heads=2", "model.num_key_value_heads=1", "model.max_position_embeddings=64",
               "data.seq_len=32", "data.valid_percent=20", "data.max_valid_blocks=4", "trainer.max_steps=3",
               "trainer.warmup_steps=1", "trainer.save_steps=100", "trainer.report_to=[]", "sample.gen_length=8",
               "sample.steps=8", "sample.block_length=8"])
    assert rc == 0
    ckpt = root / "run" / "final"
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    torch.manual_seed(0)
    judge = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=128)).eval()
    judge.save_pretrained(root / "judge")
    tokenizer.save_pretrained(root / "judge")
    return {"root": root, "ckpt": ckpt, "corpus": corpus, "judge": root / "judge"}


def _eval(args: list[str], out: Path) -> dict:
    assert main(["eval", *map(str, args), "--output", str(out), "--no-progress"]) == 0
    return json.loads(out.read_text())


def test_eval_defaults_from_the_run_and_figures_equal_the_metrics(run, tmp_path, capsys):
    report = _eval([run["ckpt"], "--judge", run["judge"], "--temperature", "1", "--num-samples", "2"],
                   tmp_path / "eval.json")
    printed = capsys.readouterr().out
    assert "PPL <=" in printed and "held-out text" in printed and "distinct_2" in printed
    # the run's recipe gave the corpus, the prompts and the decoding settings
    assert report["metrics"] == ["likelihood", "generative_perplexity", "distinct_n", "self_bleu", "repetition_rate"]
    lk = report["likelihood"]
    assert lk["corpus"] == str(run["corpus"]) and lk["bound"] and lk["seq_len"] == 32 and lk["mc_num"] == 32
    samples = report["samples"]
    assert samples["prompts"] == ["def ", "import "] and samples["decoding"]["gen_length"] == 8
    texts = samples["texts"]
    assert len(texts) == 4 and all(t.startswith(("def ", "import ")) for t in texts)
    # every figure is the metric of the texts in the report
    judge = (LlamaForCausalLM.from_pretrained(run["judge"]).eval(), AutoTokenizer.from_pretrained(run["judge"]))
    m = samples["metrics"]
    assert m["generative_perplexity"] == pytest.approx(generative_perplexity(texts, judge=judge)["perplexity"],
                                                       rel=1e-5)
    assert m["distinct_2"] == distinct_n(texts, 2) and m["self_bleu"] == self_bleu(texts)
    ref = samples["reference"]
    assert len(ref["texts"]) == 4 and all(t.startswith(("def ", "import ")) for t in ref["texts"])
    want = generative_perplexity(ref["texts"], judge=judge)["perplexity"]
    assert ref["metrics"]["generative_perplexity"] == pytest.approx(want, rel=1e-5)
    # the likelihood is the ELBO of the corpus blocks with the same seed
    from textdiff.data import load_corpus
    from textdiff.modeling.checkpoint_io import load_model

    model, tokenizer = load_model(run["ckpt"]).eval(), AutoTokenizer.from_pretrained(run["ckpt"])
    docs = load_corpus(str(run["corpus"]), valid_percent=20)
    direct = corpus_likelihood(model, tokenizer, docs.valid["text"], seq_len=32, max_blocks=32, mc_num=32,
                               progress=False)
    assert lk["nll"] == pytest.approx(direct["nll"], rel=1e-6) and lk["ppl"] == pytest.approx(math.exp(lk["nll"]))


def test_ar_likelihood_is_exact(run, tmp_path):
    """An AR checkpoint's figure is its exact NLL: token i scored from position i - 1, the block's first token
    context only."""
    from textdiff import TextDiffConfig, TextDiffModel
    from textdiff.data import load_corpus, pack_dataset

    tokenizer = AutoTokenizer.from_pretrained(run["ckpt"])
    torch.manual_seed(0)
    model = TextDiffModel(TextDiffConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=64, attention_mode="causal",
                                         eos_token_id=tokenizer.eos_token_id)).eval()
    ar = tmp_path / "ar"
    model.save_pretrained(ar)
    tokenizer.save_pretrained(ar)
    report = _eval([ar, "--corpus", run["corpus"], "--split", "train", "--seq-len", "16",
                    "--max-blocks", "3"], tmp_path / "ar.json")
    assert report["metrics"] == ["likelihood"] and report["family"] == "ar"  # no run: no prompts, no task
    blocks = pack_dataset(load_corpus(str(run["corpus"]), valid_percent=2.0).train, tokenizer, 16)["input_ids"][:3]
    ids = torch.tensor(blocks)  # [3, 16]
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[:, :-1].float(), dim=-1)  # [3, 15, V]
    nll = -logp.gather(-1, ids[:, 1:, None]).mean()
    assert not report["likelihood"]["bound"] and report["likelihood"]["tokens"] == 45
    assert report["likelihood"]["nll"] == pytest.approx(float(nll), rel=1e-5)


def test_task_accuracy_with_sampler_and_cache_options(run, tmp_path):
    report = _eval([run["ckpt"], "--metrics", "task_accuracy", "--task", "arithmetic", "--problems", "3",
                    "--gen-length", "8", "--steps", "4", "--block-length", "8", "--sampler", "threshold",
                    "--threshold", "0.9", "--cache", "dual"], tmp_path / "task.json")
    task = report["task"]
    assert task["problems"] == 3 and task["split"] == "test"
    assert task["decoding"] == {"gen_length": 8, "steps": 4, "block_length": 8, "temperature": 0.0,
                                "sampler": "threshold", "cache": "dual", "threshold": 0.9}
    from textdiff.data.tasks import get_task
    from textdiff.evaluation.metrics import task_accuracy

    problems = get_task("arithmetic").generate(3, "test", 0)
    assert [e["prompt"] for e in task["examples"]] == [p.prompt for p in problems]
    completions = [e["completion"] for e in task["examples"]]
    assert task["accuracy"] == task_accuracy("arithmetic", problems, completions)


def test_ast_parse_fraction_trims_to_the_last_complete_line():
    assert ast_parse_fraction(["x = 1\ny = (", "def f(:\n", "import os\n", "no newline"]) == 0.5
    assert ast_parse_fraction(["def f():\n    return 1\n    x = ("]) == 1.0


def _bad(args: list[str], capsys) -> str:
    capsys.readouterr()  # what earlier steps printed (save progress bars)
    assert main(["eval", *map(str, args), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("textdiff eval: error:")
    return err


def test_bad_input_is_one_line_naming_the_problem(run, tmp_path, capsys):
    ckpt = run["ckpt"]
    assert "unknown metric 'bleurt'; known metrics: likelihood, task_accuracy" in _bad([ckpt, "--metrics",
                                                                                       "bleurt"], capsys)
    assert "unknown task 'chess'" in _bad([ckpt, "--task", "chess"], capsys)
    bert = BertForMaskedLM(BertConfig(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32))
    bert.save_pretrained(tmp_path / "bert")
    assert "'bert' model (BertForMaskedLM), not a causal LM" in _bad([ckpt, "--judge", tmp_path / "bert"], capsys)
    # a diffusion checkpoint without a mask token, asked for its ELBO
    no_mask = tmp_path / "no_mask"
    shutil.copytree(ckpt, no_mask)
    config = json.loads((no_mask / "config.json").read_text())
    config["mask_token_id"] = None
    (no_mask / "config.json").write_text(json.dumps(config))
    assert "mask_token_id None" in _bad([no_mask, "--metrics", "likelihood", "--corpus", run["corpus"]], capsys)
    assert "--gen-length 10 is not a multiple of --block-length 8" in _bad([ckpt, "--gen-length", "10"], capsys)
    assert "holds a 'bert' model, not a textdiff checkpoint" in _bad([tmp_path / "bert"], capsys)


def test_sample_sampling_controls(run, capsys):
    ckpt = str(run["ckpt"])
    assert main(["sample", ckpt, "--prompt", "def ", "--gen-length", "8", "--steps", "8", "--block-length", "8",
                 "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--repetition-penalty", "1.3",
                 "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["prompt"] == "def " and result["nfe"] == 8
    assert _bad_sample([ckpt, "--prompt", "x", "--top-k", "0"], capsys).endswith(
        "--top-k must be an integer >= 1 (None = off), got 0")
    assert "--top-p must be in (0, 1]" in _bad_sample([ckpt, "--prompt", "x", "--top-p", "1.5"], capsys)


def _bad_sample(args: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(["sample", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("textdiff sample: error:")
    return err
