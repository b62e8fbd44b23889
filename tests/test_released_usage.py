"""Everything works on converted released models: the tiny converted LLaDA and Dream checkpoints of
tests/test_released_models.py run through every masked rule and cache mode, the ELBO, the coupled-GRPO estimator
and trainer, a LoRA fine-tune from a recipe and `textdiff sample`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from tests.test_released_models import SPECIALS, convert, golden, released_dir, tokenizer_for
from textdiff import generate
from textdiff.adapters import convert_checkpoint
from textdiff.cli import main


@pytest.fixture(scope="module")
def converted():
    return {arch: convert(arch) for arch in ("llada", "dream")}


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_every_masked_rule_and_cache_decodes_a_converted_model(arch, converted):
    from textdiff.samplers import CACHE_MODES
    from textdiff.samplers.registry import REGISTRY

    model, prompts = converted[arch], golden(arch)["prompts"]
    # textdiff's own rules (a plug-in registered by another test, like tests/toy_family.py, is not one of them)
    rules = [name for name, entry in REGISTRY.items()
             if entry.kind == "masked" and getattr(entry.build, "__module__", "").startswith("textdiff.")]
    assert {"low_confidence", "random", "entropy", "threshold", "factor", "ancestral"} <= set(rules)
    for rule in rules:
        for cache in CACHE_MODES:
            out = generate(model, prompts, gen_length=8, steps=8, block_length=4, sampler=rule, cache=cache,
                           generator=torch.Generator().manual_seed(0))
            assert out.sequences.shape == (2, 14) and not (out.sequences[:, 6:] == model.config.mask_token_id).any()
            assert torch.equal(out.sequences[:, :6], prompts)
    # the caches are exact where they must be: the first block's first step sees the same canvas
    ref = generate(model, prompts, gen_length=8, steps=8, block_length=8, cache="none").sequences
    dual = generate(model, prompts, gen_length=8, steps=1, block_length=8, cache="dual").sequences
    single = generate(model, prompts, gen_length=8, steps=1, block_length=8, cache="none").sequences
    assert torch.equal(dual, single) and ref.shape == dual.shape


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_elbo_and_coupled_estimates_score_a_converted_model(arch, converted):
    from textdiff.objectives.masked import MaskedDiffusionObjective
    from textdiff.rl.estimators import coupled_estimate

    model, ids = converted[arch], golden(arch)["input_ids"]
    shift, mask_id = model.config.logit_shift, model.config.mask_token_id
    objective = MaskedDiffusionObjective(mask_token_id=mask_id, logit_shift=shift)
    nll, tokens = objective.nll(model, {"input_ids": ids}, generator=torch.Generator().manual_seed(0), num_samples=4)
    assert torch.isfinite(nll) and nll > 0 and tokens == ids.numel() - (2 if shift else 0)
    loss = objective(model, {"input_ids": ids}, generator=torch.Generator().manual_seed(0)).loss
    loss.backward()
    assert model.lm_head.weight.grad is not None and torch.isfinite(model.lm_head.weight.grad).all()
    model.zero_grad()
    estimate = coupled_estimate(model, ids, None, 4, mask_token_id=mask_id, seeds=[1, 2], logit_shift=shift)
    assert estimate.logps.shape == (2, 4) and torch.isfinite(estimate.logps).all()


def word_corpus(path: Path, vocab_words: int) -> str:
    g = torch.Generator().manual_seed(0)
    lines = [json.dumps({"text": " ".join(f"w{int(i)}" for i in torch.randint(1, vocab_words, (30,), generator=g))})
             for _ in range(40)]
    path.write_text("\n".join(lines))
    return str(path)


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_lora_fine_tune_from_a_recipe_starts_from_a_released_checkpoint(arch, tmp_path):
    from textdiff.config import load_recipe
    from textdiff.train.run import train_from_recipe

    src = released_dir(tmp_path / "hub", arch)
    corpus = word_corpus(tmp_path / "corpus.jsonl", min(SPECIALS[arch].values()))
    shift = "true" if arch == "dream" else "false"
    recipe = load_recipe(None, [
        "data.seq_len=16", "data.max_valid_blocks=2", "trainer.max_steps=3", "trainer.logging_steps=1",
        "trainer.per_device_train_batch_size=2", "trainer.eval_steps=null", "trainer.save_steps=null",
        "trainer.report_to=[]", "eval.elbo_samples=1", "sample.prompts=[]", f"objective.logit_shift={shift}",
        f"run.output_dir={tmp_path / 'run'}", f"model.init_from={src}", f"data.corpus={corpus}",
        "data.valid_percent=20", "model.lora_rank=4", "model.lora_alpha=8", "trainer.learning_rate=0.01",
    ])
    results = train_from_recipe(recipe)
    assert 0 < results["trainable_parameters"] < results["model_parameters"] / 5
    start = AutoModel.from_pretrained(tmp_path / "run" / "converted")
    final = AutoModel.from_pretrained(tmp_path / "run" / "final")
    assert start.config.adapted_from["architecture"] == final.config.adapted_from["architecture"]
    assert final.config.logit_shift == (arch == "dream") and final.config.attention_mode == "bidirectional"
    changed = [k for k, v in start.state_dict().items() if not torch.equal(v, final.state_dict()[k])]
    assert changed and all(k.split(".")[-2].endswith("_proj") for k in changed)


def test_textdiff_sample_decodes_converted_checkpoints_with_their_rules(tmp_path, capsys):
    """The CLI a user runs: LLaDA with threshold + dual cache, Dream with its entropy rule and reveal schedule."""
    for arch, flags in (("llada", ["--sampler", "threshold", "--threshold", "0.5", "--cache", "dual"]),
                        ("dream", ["--sampler", "entropy", "--schedule", "dream"])):
        td = tmp_path / f"{arch}_td"
        convert_checkpoint(str(released_dir(tmp_path / arch, arch)), td)
        capsys.readouterr()
        assert main(["sample", str(td), "--prompt", "w5 w6 w7", "--gen-length", "8", "--steps", "8",
                     "--block-length", "4", "--no-chat-template", "--json", *flags]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record, arch
    assert main(["sample", str(tmp_path / "llada_td"), "--prompt", "w5", "--sampler", "low_confidence",
                 "--schedule", "dream", "--gen-length", "8", "--steps", "8", "--block-length", "4"]) == 2
    assert "schedule" in capsys.readouterr().err


def test_coupled_grpo_trains_a_converted_llada(tmp_path):
    from datasets import Dataset

    from textdiff.rl.trainer import CoupledGRPOConfig, CoupledGRPOTrainer

    td = tmp_path / "td"
    convert_checkpoint(str(released_dir(tmp_path / "hub", "llada")), td)
    tokenizer = tokenizer_for("llada")
    tokenizer.mask_token = "<|mdm_mask|>"
    dataset = Dataset.from_list([{"prompt": f"w{i} w{i + 1} w{i + 2}"} for i in range(1, 9)])

    def reward(completions, **kwargs):  # distinct words: varies between sampled completions
        return [len(set(c.split())) / 4 for c in completions]

    args = CoupledGRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_generations=4,
                             max_completion_length=4, diffusion_steps=4, learning_rate=0.1, max_steps=1,
                             logging_steps=1, report_to="none", use_cpu=True, temperature=1.0, seed=0,
                             save_strategy="no")
    trainer = CoupledGRPOTrainer(str(td), reward, args=args, train_dataset=dataset, processing_class=tokenizer)
    assert trainer.logit_shift is False  # read from the converted config
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(torch.isfinite(torch.tensor(h["loss"])) for h in logged)
    assert logged[0]["frac_reward_zero_std"] < 1  # some group had an advantage to follow
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
