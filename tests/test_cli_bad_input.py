"""Bad input to the `textdiff` command, one row per case (issue 13, "Bad input"): every case exits with status 2
and exactly one stderr line `textdiff <cmd>: error: ...` that names the problem, never a traceback, and nothing
is trained, sampled or written. Each row runs `textdiff.cli.main` in-process; no row starts a training run.

`was` records what the same input did before these checks (measured on the previous commit): "traceback",
"silent" (ran, with a changed meaning), "late" (rejected only after the training run), "unclear" (an error that
named neither the key nor the file, or a misleading one) or "" (already a clear error; kept so it stays one).
"""

import json
import os
import shutil
from dataclasses import dataclass

import pytest
import torch

from textdiff.cli import main
from textdiff.data import train_bpe_tokenizer
from textdiff.modeling import TextDiffConfig, TextDiffModel

RECIPE = "recipes/masked/stdlib_pretrain.yaml"
RL_RECIPE = "recipes/rl/countdown_d1.yaml"


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    """arguments after `textdiff`; {name} placeholders are paths of the `inputs` fixture ({out}: a fresh dir)."""
    expect: str
    """a substring of the error line that names the problem."""
    was: str = ""


def _case(id: str, argv: str, expect: str, was: str = "") -> Case:
    return Case(id, tuple(argv.split()), expect, was)


TRAIN = f"train {RECIPE} run.output_dir={{out}}"
CASES = [
    # ---- recipe files
    _case("yaml-unclosed-bracket", "train {unclosed} run.output_dir={out}", "unclosed.yaml is not valid YAML: line 2",
          "traceback"),
    _case("yaml-tab-indent", "train {tab} run.output_dir={out}", "tab.yaml is not valid YAML: line 2, column 1",
          "traceback"),
    _case("yaml-top-level-list", "train {toplist} run.output_dir={out}", "must be a mapping of sections", "traceback"),
    _case("yaml-top-level-scalar", "train {scalar} run.output_dir={out}", "found a str", "unclear"),
    _case("yaml-empty-file", "train {empty} run.output_dir={out}", "empty.yaml is empty", "silent"),
    _case("yaml-duplicate-key", "train {dup} run.output_dir={out}", "line 3, column 1: found duplicate key",
          "traceback"),
    _case("yaml-section-not-mapping", "train {secscalar} run.output_dir={out}",
          "recipe section 'model' must be a mapping", "unclear"),
    _case("yaml-binary-file", "train {binyaml} run.output_dir={out}", "is not UTF-8 text", "unclear"),
    _case("recipe-missing", "train {missing}.yaml run.output_dir={out}", "recipe not found"),
    _case("recipe-is-a-directory", "train {dir} run.output_dir={out}", "is a directory, not a YAML file", "unclear"),
    # ---- overrides: keys, types, syntax
    _case("unknown-key", f"{TRAIN} modle.hidden_size=8", "did you mean 'model'"),
    _case("unknown-nested-key", f"{TRAIN} trainer.learning_rat=0.1", "did you mean 'trainer.learning_rate'"),
    _case("wrong-type", f"{TRAIN} trainer.max_steps=lots", "trainer.max_steps"),
    _case("override-without-value", f"{TRAIN} trainer.max_steps", "is not of the form key=value"),
    _case("override-empty-key", f"{TRAIN} =5", "is not of the form section.key=value", "unclear"),
    _case("override-bad-yaml-value", f"{TRAIN} model.hidden_size=[1", "is not valid YAML", "traceback"),
    _case("override-bad-interpolation", f"{TRAIN} model.hidden_size=${{{{oops}}}}", "Interpolation key 'oops'"),
    # ---- model
    _case("hidden-size-negative", f"{TRAIN} model.hidden_size=-64", "model.hidden_size must be >= 1, got -64",
          "traceback"),
    _case("hidden-size-zero", f"{TRAIN} model.hidden_size=0", "model.hidden_size must be >= 1, got 0", "silent"),
    _case("hidden-size-not-multiple-of-heads", f"{TRAIN} model.hidden_size=66",
          "must be a multiple of model.num_attention_heads (4)"),
    _case("odd-head-size", f"{TRAIN} model.hidden_size=36", "even head size", "traceback"),
    _case("heads-not-multiple-of-kv-heads", f"{TRAIN} model.num_key_value_heads=3",
          "model.num_attention_heads must be a multiple of model.num_key_value_heads (3)"),
    _case("attention-mode-choice", f"{TRAIN} model.attention_mode=sideways", "model.attention_mode must be one of"),
    _case("seq-len-over-context", f"{TRAIN} data.seq_len=512 model.max_position_embeddings=256",
          "exceeds model.max_position_embeddings"),
    # ---- trainer
    _case("max-steps-zero", f"{TRAIN} trainer.max_steps=0", "trainer.max_steps must be >= 1", "silent"),
    _case("max-steps-negative", f"{TRAIN} trainer.max_steps=-5", "trainer.max_steps must be >= 1", "silent"),
    _case("max-steps-epochs", f"{TRAIN} trainer.max_steps=-1", "got -1", "silent"),
    _case("learning-rate-negative", f"{TRAIN} trainer.learning_rate=-1", "trainer.learning_rate must be >= 0"),
    _case("batch-size-zero", f"{TRAIN} trainer.per_device_train_batch_size=0",
          "trainer.per_device_train_batch_size must be >= 1", "unclear"),
    _case("save-steps-zero", f"{TRAIN} trainer.save_steps=0", "trainer.save_steps must be >= 1 (or null)", "silent"),
    _case("scheduler-choice", f"{TRAIN} trainer.lr_scheduler_type=cosine_annealing",
          "trainer.lr_scheduler_type must be one of"),
    _case("deepspeed-preset", f"{TRAIN} trainer.deepspeed=zero9", "trainer.deepspeed must be one of zero2, zero3"),
    # ---- objective, data, tokenizer, eval
    _case("family-unknown", f"{TRAIN} family=diffusion", "unknown family 'diffusion'; valid: ar, "),
    _case("family-typo", f"{TRAIN} family=maskd", "(did you mean 'masked'?)"),
    _case("objective-name-moved", f"{TRAIN} objective.name=ar", "objective.name is gone: name the family at the top level"),
    _case("flow-without-images", "train recipes/ar/stdlib_pretrain.yaml run.output_dir={out} family=flow",
          "it needs data.images", "traceback"),
    _case("flow-keys-in-masked-recipe", f"{TRAIN} family=flow",
          "unknown recipe key 'objective.schedule' of family flow"),
    _case("schedule-choice", f"{TRAIN} objective.schedule=sqrt", "unknown masking schedule 'sqrt'"),
    _case("family-option-in-model", f"{TRAIN} model.schedule=cosine",
          "'model.schedule' is an option of family masked: write it as objective.schedule"),
    _case("other-family-option", f"{TRAIN} objective.patch_size=4",
          "unknown recipe key 'objective.patch_size' of family masked"),
    _case("flow-option-in-model", "train recipes/image/digits_t2i.yaml run.output_dir={out} model.patch_size=4",
          "'model.patch_size' is an option of family flow: write it as objective.patch_size"),
    _case("no-training-data", f"{TRAIN} data.corpus=null", "data.corpus must be set"),
    _case("valid-percent-100", f"{TRAIN} data.valid_percent=100", "data.valid_percent must be in [0, 100)", "unclear"),
    _case("tokenizer-name", f"{TRAIN} tokenizer.name=nope", "tokenizer.name must be one of bpe, gpt2, smollm2"),
    _case("elbo-samples-zero", f"{TRAIN} eval.elbo_samples=0", "eval.elbo_samples must be >= 1", "late"),
    # ---- the end-of-training sampler, checked at load
    _case("recipe-sample-gen-not-multiple-of-block", f"{TRAIN} sample.gen_length=30 sample.block_length=8",
          "sample.gen_length 30 is not a multiple of sample.block_length 8", "late"),
    _case("recipe-sample-steps-zero", f"{TRAIN} sample.steps=0", "sample.steps must be >= 1, got 0", "late"),
    _case("recipe-sample-steps-over-gen-length", f"{TRAIN} sample.steps=1000",
          "sample.steps 1000 exceeds sample.gen_length 64", "silent"),
    _case("recipe-sample-steps-not-divisible", f"{TRAIN} sample.steps=3", "not divisible into 2 blocks", "late"),
    # ---- corpora
    _case("corpus-missing", f"{TRAIN} data.corpus={{missing}}.txt", "corpus path not found"),
    _case("corpus-binary-txt", f"{TRAIN} data.corpus={{binary}}", "bin.txt is not UTF-8 text", "traceback"),
    _case("corpus-malformed-jsonl", f"{TRAIN} data.corpus={{badjsonl}}", "bad.jsonl is not valid JSON lines",
          "traceback"),
    _case("corpus-empty-jsonl", f"{TRAIN} data.corpus={{emptyjsonl}}", "empty.jsonl is empty", "traceback"),
    _case("corpus-too-short", f"{TRAIN} data.corpus={{short}} tokenizer.vocab_size=300",
          "short.txt is too short to train on", "unclear"),
    _case("corpus-empty-valid-split", f"{TRAIN} data.corpus={{onedoc}} data.valid_percent=0 data.seq_len=16 "
          "tokenizer.vocab_size=300", "onedoc.txt has an empty validation split", "late"),
    # ---- checkpoints: model.init_from, resume
    _case("init-from-missing", f"{TRAIN} model.init_from={{missing}}", "neither a checkpoint directory nor 'smollm2'"),
    _case("init-from-truncated-safetensors", f"{TRAIN} model.init_from={{trunc}}", "trunc/model.safetensors",
          "traceback"),
    _case("init-from-no-weights", f"{TRAIN} model.init_from={{noweights}}", "noweights holds no weights", "traceback"),
    _case("init-from-not-a-checkpoint", f"{TRAIN} model.init_from={{other}}", "is not an HF model directory"),
    _case("resume-truncated-checkpoint", f"{TRAIN} run.output_dir={{resumerun}} "
          "trainer.resume_from_checkpoint={resumerun}/checkpoint-2", "checkpoint-2", "traceback"),
    # ---- textdiff sample
    _case("sample-missing-checkpoint", "sample {missing} --prompt x", "checkpoint directory not found"),
    _case("sample-truncated-safetensors", "sample {trunc} --prompt x", "trunc/model.safetensors is not a readable",
          "traceback"),
    _case("sample-no-weights", "sample {noweights} --prompt x", "holds no weights", "traceback"),
    _case("sample-not-a-checkpoint", "sample {other} --prompt x", "is not a checkpoint directory (no config.json)",
          "unclear"),
    _case("sample-no-tokenizer", "sample {notok} --prompt x", "notok has no loadable tokenizer", "unclear"),
    _case("sample-corrupt-config", "sample {badcfg} --prompt x", "config.json is not valid JSON", "unclear"),
    _case("sample-foreign-model-type", "sample {bert} --prompt x", "holds a 'bert' model, not a textdiff checkpoint",
          "unclear"),
    _case("sample-negative-temperature", "sample {ckpt} --prompt x --temperature -1",
          "--temperature must be >= 0 (0 = greedy), got -1.0", "silent"),
    _case("sample-steps-over-gen-length", "sample {ckpt} --prompt x --steps 1000 --gen-length 16 --block-length 16",
          "--steps 1000 exceeds --gen-length 16", "silent"),
    _case("sample-steps-zero", "sample {ckpt} --prompt x --steps 0", "--steps must be >= 1, got 0", "unclear"),
    _case("sample-gen-not-multiple-of-block", "sample {ckpt} --prompt x --gen-length 30 --block-length 8",
          "--gen-length 30 is not a multiple of --block-length 8"),
    _case("sample-steps-not-divisible", "sample {ckpt} --prompt x --steps 3",
          "--steps 3 is not divisible into 2 blocks"),
    _case("sample-negative-cfg", "sample {ckpt} --prompt x --cfg-scale -1", "--cfg-scale must be >= 0", "silent"),
    _case("sample-threshold-range", "sample {ckpt} --prompt x --sampler threshold --threshold 1.5",
          "threshold must be in [0, 1]"),
    _case("sample-option-of-another-rule", "sample {ckpt} --prompt x --threshold 0.9",
          "bad options for sampler 'low_confidence'"),
    _case("sample-causal-with-masked-options", "sample {causal} --prompt x --temperature 0.7 --cache dual",
          "--temperature, --cache: masked-diffusion options", "silent"),
    _case("sample-bad-cache-choice", "sample {ckpt} --prompt x --cache bogus", "argument --cache: invalid choice"),
    _case("sample-steps-not-a-number", "sample {ckpt} --prompt x --steps many", "argument --steps: invalid int"),
    _case("sample-unknown-option", "sample {ckpt} --prompt x --tempurature 1", "unrecognized arguments", "unclear"),
    _case("sample-missing-prompt", "sample {ckpt}", "the following arguments are required: --prompt"),
    _case("sample-dit-bad-solver", "sample {dit} --prompt x --solver ddim", "--solver must be one of"),
    _case("sample-text-visual-option", "sample {ckpt} --prompt x --guidance-scale 2",
          "--guidance-scale: image / video options, but", "silent"),
    _case("sample-dit-text-option", "sample {dit} --prompt x --temperature -1",
          "--temperature: text decoding options, but this is an image / video checkpoint", "silent"),
    _case("sample-dit-zero-samples", "sample {dit} --prompt x --num-samples 0", "--num-samples must be >= 1",
          "traceback"),
    # ---- textdiff convert
    _case("convert-missing-source", "convert --from {missing} --to {out}", "no such directory"),
    _case("convert-truncated-textdiff", "convert --from {trunc} --to {out}", "trunc/model.safetensors", "traceback"),
    _case("convert-truncated-hf", "convert --from {hftrunc} --to {out}", "hftrunc/model.safetensors is not a readable",
          "traceback"),
    _case("convert-not-a-model", "convert --from {other} --to {out}", "is not an HF model directory"),
    _case("convert-corrupt-config", "convert --from {badcfg} --to {out}", "config.json is not valid JSON", "unclear"),
    # ---- textdiff rl
    _case("rl-one-generation", f"rl {RL_RECIPE} run.output_dir={{out}} rl.num_generations=1",
          "rl.num_generations must be >= 2"),
    _case("rl-steps-over-gen-length", f"rl {RL_RECIPE} run.output_dir={{out}} rl.diffusion_steps=64",
          "rl.diffusion_steps 64 exceeds rl.gen_length 16"),
    _case("rl-unknown-reward", f"rl {RL_RECIPE} run.output_dir={{out}} rl.reward_funcs=[nope]",
          "rl.reward_funcs must name rewards of"),
    _case("rl-init-from-missing", f"rl {RL_RECIPE} run.output_dir={{out}} rl.init_from={{missing}}",
          "is not a checkpoint directory"),
    # ---- the command line itself
    _case("no-command", "", "the following arguments are required: command"),
    _case("unknown-command", "trian recipes/x.yaml", "argument command: invalid choice: 'trian'"),
]


def _save_text_checkpoint(path, **config) -> None:
    tokenizer = train_bpe_tokenizer(["def f(x):\n    return x\n"] * 20, vocab_size=280, save_dir=path)
    torch.manual_seed(0)
    TextDiffModel(TextDiffConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=128, mask_token_id=tokenizer.mask_token_id, eos_token_id=tokenizer.eos_token_id,
        **config,
    )).save_pretrained(path)


def _truncate(file) -> None:
    with open(file, "r+b") as f:
        f.truncate(os.path.getsize(file) // 2)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Every malformed input of the table, built once: tiny checkpoints (whole, truncated, without weights,
    foreign), recipe files and corpora."""
    from transformers import LlamaConfig

    from textdiff.modeling import DiTConfig, DiTModel

    root = tmp_path_factory.mktemp("bad_input")
    p = {name: root / name for name in ("ckpt", "causal", "trunc", "noweights", "notok", "other", "badcfg", "bert",
                                        "dit", "hftrunc", "dir", "resumerun")}
    _save_text_checkpoint(p["ckpt"])
    _save_text_checkpoint(p["causal"], attention_mode="causal")
    shutil.copytree(p["ckpt"], p["trunc"])
    _truncate(p["trunc"] / "model.safetensors")
    shutil.copytree(p["ckpt"], p["noweights"])
    (p["noweights"] / "model.safetensors").unlink()
    p["notok"].mkdir()
    shutil.copy(p["ckpt"] / "config.json", p["notok"])
    shutil.copy(p["ckpt"] / "model.safetensors", p["notok"])
    p["other"].mkdir()
    (p["other"] / "notes.txt").write_text("not a model")
    shutil.copytree(p["ckpt"], p["badcfg"])
    (p["badcfg"] / "config.json").write_text('{"model_type": "textdiff", "hidden_size": 3')
    shutil.copytree(p["ckpt"], p["bert"])
    (p["bert"] / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    DiTModel(DiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(p["dit"])
    LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                architectures=["LlamaForCausalLM"]).save_pretrained(p["hftrunc"])
    shutil.copy(p["ckpt"] / "model.safetensors", p["hftrunc"] / "model.safetensors")
    _truncate(p["hftrunc"] / "model.safetensors")
    p["dir"].mkdir()
    shutil.copytree(p["trunc"], p["resumerun"] / "checkpoint-2")

    recipes = {
        "unclosed.yaml": "model: [unclosed\n", "tab.yaml": "model:\n\thidden_size: 64\n",
        "toplist.yaml": "- model\n- trainer\n", "scalar.yaml": "just a string\n", "empty.yaml": "# nothing\n",
        "dup.yaml": "model:\n  hidden_size: 64\nmodel:\n  hidden_size: 32\n", "secscalar.yaml": "model: 5\n",
    }
    for name, text in recipes.items():
        (root / name).write_text(text)
        p[name.removesuffix(".yaml")] = root / name
    p["binyaml"] = root / "bin.yaml"
    p["binyaml"].write_bytes(b"\xff\xfe\x00model")
    p["binary"] = root / "bin.txt"
    p["binary"].write_bytes(bytes(range(128, 256)) * 20)
    p["badjsonl"] = root / "bad.jsonl"
    p["badjsonl"].write_text('{"text": "ok"}\n{"text": broken\n')
    p["emptyjsonl"] = root / "empty.jsonl"
    p["emptyjsonl"].write_text("")
    p["short"] = root / "short.txt"
    p["short"].write_text("short text")
    p["onedoc"] = root / "onedoc.txt"  # one document: the hash split puts it in train, valid is empty
    p["onedoc"].write_text("def f(x):\n    return x + 1\n" * 100)
    p["missing"] = root / "does_not_exist"
    return {name: str(path) for name, path in p.items()}


def _outputs(out: str) -> list[str]:
    """What a run, a sample or a conversion would have left in `out` (bookkeeping such as a lock does not count)."""
    if not os.path.isdir(out):
        return []
    return sorted(n for n in os.listdir(out) if n in ("final", "results.json", "converted", "config.json")
                  or n.startswith("checkpoint-") or n.endswith(".safetensors"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_naming_the_problem(case, inputs, tmp_path, capsys):
    import datasets

    datasets.disable_progress_bars()
    out = str(tmp_path / "out")
    argv = [arg.format(out=out, **inputs) for arg in case.argv]
    before = _outputs(inputs["resumerun"])
    rc = main(argv)
    captured = capsys.readouterr()
    command = argv[0] if argv and argv[0] in ("train", "sample", "convert", "rl", "info") else ""
    prefix = f"textdiff {command}: error: " if command else "textdiff: error: "
    lines = [line for line in captured.err.splitlines() if line.startswith(prefix)]
    assert rc == 2, captured.err
    assert "Traceback" not in captured.err
    assert len(lines) == 1 and captured.err.rstrip().endswith(lines[0]), captured.err
    assert case.expect in lines[0], lines[0]
    # nothing trained, sampled or converted
    assert captured.out == ""
    assert _outputs(out) == []
    assert _outputs(inputs["resumerun"]) == before


def test_every_case_id_is_unique_and_the_table_covers_the_issue():
    assert len({c.id for c in CASES}) == len(CASES)
    assert sum(c.was == "traceback" for c in CASES) >= 10
    assert sum(c.was in ("silent", "late") for c in CASES) >= 8


# ---------------------------------------------------------------------------------------------- the library below


def test_generate_rejects_what_it_used_to_clamp(tiny_model_factory):
    """`textdiff.generate` itself: more steps than tokens (was: quietly one pass per token), a negative temperature
    (was: greedy) and a negative CFG scale (was: no guidance) are ValueErrors naming the argument."""
    import textdiff

    model, prompt = tiny_model_factory(), torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="steps 1000 exceeds gen_length 16"):
        textdiff.generate(model, prompt, gen_length=16, steps=1000, block_length=16)
    with pytest.raises(ValueError, match=r"temperature must be >= 0 \(0 = greedy\), got -1"):
        textdiff.generate(model, prompt, gen_length=8, steps=8, block_length=8, temperature=-1.0)
    with pytest.raises(ValueError, match="cfg_scale must be >= 0"):
        textdiff.generate(model, prompt, gen_length=8, steps=8, block_length=8, cfg_scale=-0.5)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        textdiff.generate(model, prompt, gen_length=8, steps=0, block_length=8)
    assert textdiff.generate(model, prompt, gen_length=8, steps=8, block_length=4).nfe == 8
