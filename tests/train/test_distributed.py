"""Data parallelism: N ranks x batch b train exactly like 1 process x batch N*b.

Fast tests prove the pieces in process: each rank's per-example noise is its rows of the global batch's noise
(`batch_shard`), so the mean of the ranks' gradients is the one-process gradient of the whole batch, for the
masked and flow objectives (the AR objective draws no noise); every trained parameter of each family's model
gets a gradient (DDP runs with find_unused_parameters=False); the one-line refusals. Slow tests launch torchrun
(2 gloo processes on CPU, ~15 s each): same losses and final weights as one process for AR, masked and flow,
DeepSpeed ZeRO-2 and ZeRO-3 across 2 processes, a 2-process checkpoint resumed by 1 process, `textdiff rl` in 2 processes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_config
from textdiff.modeling import DiTConfig, DiTModel, TextDiffModel
from textdiff.objectives import AutoregressiveObjective, MaskedDiffusionObjective
from textdiff.objectives.flow import FlowMatchingObjective
from textdiff.schedules import (
    batch_shard,
    normal_noise,
    sample_flow_sigmas,
    sample_timesteps,
    uniform_noise,
)

ROOT = Path(__file__).parents[2]


# ---------------------------------------------------------------------------------------------- noise, in process


def _ranks(draw, world=2, seed=0):
    """What each of `world` ranks draws from the same RNG state under batch_shard."""
    parts = []
    for rank in range(world):
        torch.manual_seed(seed)
        with batch_shard(rank, world):
            parts.append(draw())
    return parts


@pytest.mark.parametrize("draw", [
    lambda b: uniform_noise((b, 5), per_example=True),
    lambda b: normal_noise((b, 3, 2)),
    lambda b: sample_timesteps(b, method="uniform"),
    lambda b: sample_timesteps(b, method="low_discrepancy"),
    lambda b: sample_timesteps(b, method="stratified"),
    lambda b: sample_flow_sigmas(b, scheme="logit_normal"),
    lambda b: sample_flow_sigmas(b, scheme="mode"),
], ids=["uniform", "normal", "t_uniform", "t_low_discrepancy", "t_stratified", "sigma_logit_normal", "sigma_mode"])
def test_each_rank_draws_its_rows_of_the_global_batch_noise(draw):
    torch.manual_seed(0)
    whole = draw(6)  # one process, global batch 6
    parts = _ranks(lambda: draw(3))  # two ranks, batch 3 each
    assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(parts[0], parts[1])  # ranks never share noise


def test_low_discrepancy_strata_span_the_global_batch():
    """One t in each 1/(N b)-th of [eps, 1) over the whole global batch, not N copies of b strata."""
    parts = _ranks(lambda: sample_timesteps(4, eps=0.0, method="low_discrepancy"), world=3)
    strata = sorted(int(t * 12) for t in torch.cat(parts))
    assert strata == list(range(12))


def test_whole_batch_draws_agree_across_ranks():
    parts = _ranks(lambda: uniform_noise((1,)))
    assert torch.equal(parts[0], parts[1])
    with pytest.raises(ValueError, match="rank 2 is not in"), batch_shard(2, 2):
        pass


def _grads(model, loss_of, batch, world):
    """Mean over `world` ranks of the gradient of `loss_of(model, rank's rows)`, all ranks from one RNG state."""
    b = next(iter(batch.values())).shape[0] // world
    total = None
    for rank in range(world):
        model.zero_grad()
        torch.manual_seed(7)
        with batch_shard(rank, world):
            loss_of(model, {k: v[rank * b:(rank + 1) * b] for k, v in batch.items()}).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        total = grads if total is None else [t + g for t, g in zip(total, grads)]
    return [t / world for t in total]


def _text_batch(B=4, L=12):
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, 60, (B, L), generator=g), "attention_mask": torch.ones(B, L, dtype=torch.long)}


def _dit_batch(B=4):
    g = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.rand(B, 1, 8, 8, generator=g) * 2 - 1,
            "encoder_hidden_states": torch.randn(B, 6, 12, generator=g),
            "encoder_attention_mask": torch.ones(B, 6, dtype=torch.long), "pooled_text": torch.randn(B, 12, generator=g)}


def _tiny_dit() -> DiTModel:
    torch.manual_seed(0)
    model = DiTModel(DiTConfig(in_channels=1, sample_size=8, num_frames=1, patch_size=2, hidden_size=32,
                               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                               text_embed_dim=12, max_text_length=6))
    with torch.no_grad():  # adaLN-Zero starts at zero: give every path signal so the gradients are informative
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


CASES = {
    "masked": (lambda: TextDiffModel(tiny_config()), MaskedDiffusionObjective(mask_token_id=66), _text_batch),
    "masked_annealed": (lambda: TextDiffModel(tiny_config()),
                        MaskedDiffusionObjective(mask_token_id=66, anneal_steps=10), _text_batch),
    "flow": (_tiny_dit, FlowMatchingObjective(cond_drop_prob=0.3), _dit_batch),
}


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_average_to_the_one_process_gradient(name):
    make, objective, make_batch = CASES[name]
    torch.manual_seed(0)
    model = make().train()
    step = {"step": 3} if getattr(objective, "step_dependent", False) else {}

    def loss_of(m, batch):
        return objective(m, batch, **step).loss

    batch = make_batch()
    one = _grads(model, loss_of, batch, world=1)
    two = _grads(model, loss_of, batch, world=2)
    for a, b in zip(one, two):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)

    # the bug batch_shard fixes: every rank seeding its noise alike (each draws rows 0..b-1 of the noise)
    def unsharded(m, batch):
        with batch_shard(0, 1):
            return loss_of(m, batch)

    same_noise = _grads(model, unsharded, batch, world=2)
    assert any(not torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(one, same_noise))


@pytest.mark.parametrize("family", ["masked", "ar", "flow"])
def test_every_trained_parameter_gets_a_gradient(family):
    """DDP runs with find_unused_parameters=False: a parameter outside the autograd graph would make its
    gradient reduction wait forever, so each family's training loss must reach every trainable parameter."""
    torch.manual_seed(0)
    if family == "flow":
        model, objective, batch = _tiny_dit(), FlowMatchingObjective(cond_drop_prob=0.1), _dit_batch()
    elif family == "ar":
        model, objective, batch = (TextDiffModel(tiny_config(attention_mode="causal")), AutoregressiveObjective(),
                                   _text_batch())
    else:
        model, objective, batch = TextDiffModel(tiny_config()), MaskedDiffusionObjective(mask_token_id=66), _text_batch()
    objective(model.train(), batch).loss.backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


# ---------------------------------------------------------------------------------------------- refusals, settings


def test_zero3_with_lora_is_refused_in_one_line(tmp_path):
    from textdiff.config import load_recipe
    from textdiff.train.run import training_arguments

    recipe = load_recipe("recipes/masked/arithmetic_sft.yaml", [f"run.output_dir={tmp_path}", "model.lora_rank=4",
                                                                 "trainer.deepspeed=zero3", "trainer.report_to=[]"])
    with pytest.raises(ValueError, match=r"ZeRO-3 with model.lora_rank > 0 is unsupported.*use trainer.deepspeed=zero2"):
        training_arguments(recipe)


def test_missing_deepspeed_config_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "textdiff.cli", "train", "recipes/masked/arithmetic_sft.yaml",
                           "trainer.deepspeed=/nonexistent/ds.json"], cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainer.deepspeed" in lines[0] and "/nonexistent/ds.json" in lines[0]


def test_multi_process_cpu_launch_gets_gloo_and_no_unused_parameter_search(monkeypatch):
    from textdiff.train.distributed import distributed_training_arguments

    monkeypatch.setenv("ACCELERATE_USE_CPU", "unset")  # restored (to absent) after the test
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed_training_arguments() == {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed_training_arguments() == {"ddp_find_unused_parameters": False, "ddp_backend": "gloo"}
    assert os.environ["ACCELERATE_USE_CPU"] == "true"
    monkeypatch.delenv("ACCELERATE_USE_CPU")  # DeepSpeed picks gloo itself; ACCELERATE_USE_CPU would disable it
    assert distributed_training_arguments(deepspeed=True) == {"ddp_find_unused_parameters": False}
    assert "ACCELERATE_USE_CPU" not in os.environ


# ---------------------------------------------------------------------------------------------- torchrun (slow)

TINY_TEXT = [
    "data.valid_percent=10", "model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2",
    "model.num_key_value_heads=1", "tokenizer.vocab_size=300", "data.seq_len=32", "data.max_valid_blocks=8",
]
TINY_IMAGE = ["model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2",
              "data.num_train_examples=64", "data.num_valid_examples=8"]
COMMON = ["trainer.logging_steps=1", "trainer.warmup_steps=0", "trainer.learning_rate=1e-2", "trainer.eval_steps=null",
          "trainer.save_steps=null", "trainer.report_to=[]", "eval.elbo_samples=1", "sample.prompts=[]"]
RECIPES = {"ar": "recipes/ar/stdlib_pretrain.yaml", "masked": "recipes/masked/stdlib_pretrain.yaml",
           "flow": "recipes/image/digits_t2i.yaml"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    import random

    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "def", "return", "import", "class", "self", "none", "true", "false", "for", "while", "in", "if", "else"]
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(60))}) + "\n"
                            for _ in range(300)))
    return path


def launch(nproc: int, args: list[str], env: dict | None = None, command: str = "train") -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node N -m textdiff.cli ...` (plain python for one process), checked."""
    start = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
             str(29600 + os.getpid() % 300)] if nproc > 1 else [sys.executable]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(key, None)
    proc = subprocess.run([*start, "-m", "textdiff.cli", command, *args], cwd=ROOT, env=full_env, capture_output=True, check=False,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _train(family, corpus, out, nproc, batch, extra=(), env=None):
    tiny = TINY_IMAGE if family == "flow" else [*TINY_TEXT, f"data.corpus={corpus}"]
    launch(nproc, [RECIPES[family], *tiny, *COMMON, f"trainer.per_device_train_batch_size={batch}",
                   f"run.output_dir={out}", *extra], env=env)
    from safetensors.torch import load_file

    results = json.loads((out / "results.json").read_text())
    return results, load_file(out / "final" / "model.safetensors")


def _losses(results):
    return [h["loss"] for h in results["log_history"] if "loss" in h]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ar", "masked", "flow"])
def test_two_processes_train_like_one_with_twice_the_batch(family, corpus, tmp_path):
    two, w_two = _train(family, corpus, tmp_path / "two", 2, 2, ["trainer.max_steps=4"])
    one, w_one = _train(family, corpus, tmp_path / "one", 1, 4, ["trainer.max_steps=4"])
    assert (two["world_size"], two["per_rank_batch_size"], two["effective_batch_size"]) == (2, 2, 4)
    assert (one["world_size"], one["effective_batch_size"]) == (1, 4)
    assert two["engine"] == "DistributedDataParallel" and two["ddp_backend"] == "gloo"
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-5)
    assert len(_losses(two)) == 4 and _losses(two)[-1] < _losses(two)[0]
    for key in w_one:
        torch.testing.assert_close(w_two[key], w_one[key], rtol=1e-4, atol=1e-5)
    if family == "ar":  # exact NLL over the whole validation split, summed over the two ranks' shards
        assert two["final_eval"]["eval_tokens"] == one["final_eval"]["eval_tokens"]
        assert two["final_eval"]["eval_loss"] == pytest.approx(one["final_eval"]["eval_loss"], rel=1e-5)


@pytest.mark.slow
def test_deepspeed_zero2_across_two_processes_trains_like_one(corpus, tmp_path):
    env = {"DS_ACCELERATOR": "cpu"}
    two, w_two = _train("masked", corpus, tmp_path / "two", 2, 2, ["trainer.max_steps=3", "trainer.deepspeed=zero2"],
                        env)
    one, w_one = _train("masked", corpus, tmp_path / "one", 1, 4, ["trainer.max_steps=3"])
    assert two["engine"] == "DeepSpeedEngine" and two["world_size"] == 2
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-5)
    for key in w_one:
        torch.testing.assert_close(w_two[key], w_one[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_deepspeed_zero3_across_two_processes_trains_like_one_and_saves_a_loadable_model(corpus, tmp_path):
    """ZeRO-3 partitions the parameters over the 2 ranks; the saved model is the gathered whole (the preset's
    stage3_gather_16bit_weights_on_model_save), which load_model reads and `textdiff sample` decodes from."""
    env = {"DS_ACCELERATOR": "cpu"}
    two, w_two = _train("masked", corpus, tmp_path / "two", 2, 2, ["trainer.max_steps=3", "trainer.deepspeed=zero3"],
                        env)
    one, w_one = _train("masked", corpus, tmp_path / "one", 1, 4, ["trainer.max_steps=3"])
    assert two["engine"] == "DeepSpeedEngine" and two["world_size"] == 2
    assert two["deepspeed_config"].endswith("zero3.json") and two["effective_batch_size"] == 4
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-5)
    assert sorted(w_two) == sorted(w_one)
    for key in w_one:  # whole tensors, not a rank's flat ZeRO-3 partition
        assert w_two[key].shape == w_one[key].shape
        torch.testing.assert_close(w_two[key], w_one[key], rtol=1e-4, atol=1e-5)
    from textdiff.modeling.checkpoint_io import load_model

    model = load_model(tmp_path / "two" / "final")
    torch.testing.assert_close(model.state_dict()["embed_tokens.weight"], w_one["embed_tokens.weight"],
                               rtol=1e-4, atol=1e-5)
    proc = subprocess.run([sys.executable, "-m", "textdiff.cli", "sample", str(tmp_path / "two" / "final"), "--prompt",
                           "def", "--gen-length", "8", "--steps", "8", "--block-length", "8", "--json"], cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (sample,) = json.loads(proc.stdout)
    assert sample["nfe"] == 8 and isinstance(sample["completion"], str)


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process_on_the_same_loss_curve(corpus, tmp_path):
    ckpt = ["trainer.max_steps=6", "trainer.save_steps=3", "trainer.lr_scheduler_type=constant"]
    whole, w_whole = _train("masked", corpus, tmp_path / "two", 2, 2, ckpt)
    assert (tmp_path / "two" / "checkpoint-3" / "rng_state_1.pth").exists()
    # the first 3 steps of the 2-process run, then 1 process (batch 4) from its checkpoint-3
    _train("masked", corpus, tmp_path / "mixed", 2, 2, ["trainer.max_steps=3", "trainer.save_steps=3",
                                                       "trainer.lr_scheduler_type=constant"])
    scheduled = ["trainer.max_steps=6", "trainer.save_steps=3", "trainer.lr_scheduler_type=constant",
                 "trainer.resume_from_checkpoint=latest"]
    resumed, w_resumed = _train("masked", corpus, tmp_path / "mixed", 1, 4, scheduled)
    assert resumed["world_size"] == 1
    assert _losses(resumed)[-3:] == pytest.approx(_losses(whole)[-3:], rel=1e-5)
    for key in w_whole:
        torch.testing.assert_close(w_resumed[key], w_whole[key], rtol=1e-4, atol=1e-5)
    # and back: the 1-process checkpoint-6 continues in 2 processes to step 8, like 1 process would
    more = ["trainer.max_steps=8", "trainer.save_steps=3", "trainer.lr_scheduler_type=constant",
            "trainer.resume_from_checkpoint=latest"]
    back, _ = _train("masked", corpus, tmp_path / "mixed", 2, 2, more)
    alone, _ = _train("masked", corpus, tmp_path / "mixed_one", 1, 4, ["trainer.max_steps=8", "trainer.save_steps=3",
                                                                      "trainer.lr_scheduler_type=constant"])
    assert _losses(back)[-2:] == pytest.approx(_losses(alone)[-2:], rel=1e-5)


@pytest.mark.slow
def test_rl_runs_in_two_processes(tmp_path):
    from tests.test_recipes import _tiny

    sft = ROOT / "recipes" / "masked" / "countdown_sft.yaml"
    launch(1, [str(sft), *_tiny(sft), f"run.output_dir={tmp_path / 'sft'}"])
    rl = ROOT / "recipes" / "rl" / "countdown_coupled_grpo.yaml"
    launch(2, [str(rl), *_tiny(rl), f"run.output_dir={tmp_path / 'rl'}", f"rl.init_from={tmp_path / 'sft' / 'final'}",
               "trainer.max_steps=2", "trainer.per_device_train_batch_size=4", "rl.num_generations=4"],
           command="rl")
    results = json.loads((tmp_path / "rl" / "results.json").read_text())
    assert results["world_size"] == 2 and results["effective_batch_size"] == 8
    assert len([h for h in results["log_history"] if "loss" in h]) == 2


def test_overridden_trainer_hook_still_exists():
    from transformers import Trainer

    assert hasattr(Trainer, "_load_rng_state")
