"""Continuous embedding diffusion (family: continuous): the math of noising, score interpolation, the time warp,
self-conditioning, conditioning, sampling through the shared loop, the CLI, and a tiny training run."""

import math
from pathlib import Path

import pytest
import torch

from textdiff.families.continuous import ContinuousObjective, ContinuousOptions, generate_texts, likelihood
from textdiff.families.continuous.objective import (
    denoise,
    embedding_table,
    expected_embedding,
    noise_embeddings,
)
from textdiff.families.continuous.sampling import flow_level_of, level_of_flow, sample_tokens
from textdiff.modeling import TextDiffConfig, TextDiffModel
from textdiff.modeling.checkpoint_io import load_model
from textdiff.modeling.time_warp import TimeWarp

RECIPE = Path(__file__).parents[1] / "recipes" / "continuous" / "stdlib_pretrain.yaml"


def tiny(path="ve", self_condition=True, bins=10, seed=0):
    torch.manual_seed(seed)
    cfg = TextDiffConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, max_position_embeddings=64, attention_mode="bidirectional", time_conditioning=True,
        mask_token_id=39, pad_token_id=0, vector_dim=32, vector_self_condition=self_condition, time_warp_bins=bins,
        continuous_path=path, continuous_sigma_min=1.0, continuous_sigma_max=300.0)
    return TextDiffModel(cfg).eval()


def test_x0_hat_of_one_hot_is_the_noising_embedding():
    model = tiny(path="flow")
    ids = torch.tensor([[3, 7, 38, 0]])
    objective = ContinuousObjective(path="flow")
    _, x_at_zero = objective._noisy(model, {"input_ids": ids}, torch.zeros(1))  # t = 0: the clean embeddings
    one_hot = torch.full((1, 4, 40), -math.inf)
    one_hot.scatter_(-1, ids[..., None], 0.0)
    x0_hat = expected_embedding(one_hot, embedding_table(model))
    torch.testing.assert_close(x0_hat, x_at_zero.float(), rtol=0, atol=1e-6)
    # the table is the L2-normalised, sqrt(d)-scaled embedding: every row has norm sqrt(d)
    norms = embedding_table(model).norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, math.sqrt(32)))


@pytest.mark.parametrize("path", ["ve", "flow"])
def test_noising_has_the_stated_mean_and_variance(path):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 3, 8, generator=g).expand(200_000, 3, 8)
    t = torch.full((200_000,), 0.3)
    x = noise_embeddings(x0, torch.randn(x0.shape, generator=g), t, path, 1.0, 300.0)
    if path == "ve":
        sigma = 1.0 + 0.3 * 299.0
        mean, std = x0[0], sigma
    else:
        mean, std = 0.7 * x0[0], 0.3
    torch.testing.assert_close(x.mean(0), mean, rtol=0, atol=5 * std / math.sqrt(200_000))
    torch.testing.assert_close(x.std(0), torch.full_like(mean, std), rtol=0.02, atol=0)


def test_flow_level_round_trip_and_ve_equivalence():
    t = torch.linspace(0, 1, 11)
    for path in ("ve", "flow"):
        torch.testing.assert_close(level_of_flow(flow_level_of(t, path, 1.0, 300.0), path, 1.0, 300.0), t,
                                   rtol=0, atol=1e-4)
    # a ve state x0 + sigma eps is (1 - u)^-1 times the flow state (1 - u) x0 + u eps at u = sigma / (1 + sigma)
    x0, eps, sigma = torch.randn(5), torch.randn(5), 7.0
    u = sigma / (1 + sigma)
    torch.testing.assert_close((x0 + sigma * eps) * (1 - u), (1 - u) * x0 + u * eps)


def test_time_warp_is_monotone_onto_the_unit_interval_and_learns_the_loss():
    warp = TimeWarp(20, momentum=1.0)
    t = torch.linspace(0, 1, 101)
    torch.testing.assert_close(warp(t), t)  # identity before any loss is seen
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # a sigmoid-shaped loss curve, noisy: the fit must still be monotone
        ts = torch.rand(256, generator=g)
        warp.update(ts, torch.sigmoid(12 * (ts - 0.3)) * 5 + 0.3 * torch.randn(256, generator=g))
    w = warp(t)
    assert float(w[0]) == 0.0 and float(w[-1]) == 1.0
    assert bool((w[1:] > w[:-1]).all()), "strictly increasing"
    torch.testing.assert_close(warp.inverse(warp(t)), t, rtol=0, atol=1e-5)
    # the warp puts its density where the loss rises: more mass in [0.2, 0.4] than uniform
    assert float(warp(torch.tensor(0.4)) - warp(torch.tensor(0.2))) > 0.4
    levels = warp.step_levels(16)
    assert float(levels[0]) == 1.0 and bool((levels[1:] < levels[:-1]).all())


def test_training_and_sampling_hold_the_same_warp_object_after_save_and_load(tmp_path):
    model = tiny()
    model.train()
    objective = ContinuousObjective(self_condition=0.0)
    batch = {"input_ids": torch.randint(0, 39, (8, 12))}
    for _ in range(3):
        objective(model, batch).loss.backward()
    assert float(model.time_warp.counts.sum()) == 24
    model.save_pretrained(tmp_path / "ck")
    loaded = load_model(tmp_path / "ck").eval()
    torch.testing.assert_close(loaded.time_warp.losses, model.time_warp.losses, rtol=0, atol=0)
    seen = []
    for m in (model, loaded):
        warp = m.time_warp
        original = warp.step_levels
        warp.step_levels = lambda n, _w=warp, _o=original: seen.append(_w) or _o(n)
        sample_tokens(m.eval(), torch.zeros(1, 6, dtype=torch.long), torch.zeros(1, 6, dtype=torch.bool), steps=3)
        m.train()
        before = warp.counts.clone()
        objective(m, batch)
        assert float(warp.counts.sum() - before.sum()) == 8  # the objective updated this very object
    assert seen[0] is model.time_warp and seen[1] is loaded.time_warp


def test_self_conditioning_switched_off_equals_the_plain_model():
    plain, with_sc = tiny(self_condition=False, seed=1), tiny(self_condition=True, seed=1)
    state = plain.state_dict()
    sc_state = with_sc.state_dict()
    for k, v in state.items():
        if k == "vector_in.proj.weight":
            sc_state[k][:, :32] = v  # the x half of [x ; x0_hat]
        else:
            sc_state[k] = v
    with_sc.load_state_dict(sc_state)
    ids = torch.randint(0, 39, (2, 10))
    keep = torch.zeros_like(ids, dtype=torch.bool)
    x_t, t = torch.randn(2, 10, 32), torch.tensor([0.2, 0.9])
    kw = {"path": "ve", "sigma_min": 1.0, "sigma_max": 300.0}
    a = denoise(plain, x_t, t, ids, keep, None, **kw)
    b = denoise(with_sc, x_t, t, ids, keep, None, **kw)  # no estimate: the input reads zeros
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # and the objective with self-conditioning off scores exactly the plain CE of that call
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    objective = ContinuousObjective()
    ce, n = objective.row_ce(plain, {"input_ids": ids}, t, keep, self_condition=False, generator=g1)
    x0 = embedding_table(plain)[ids]
    x = noise_embeddings(x0, torch.randn(x0.shape, generator=g2), t, "ve", 1.0, 300.0)
    ref = torch.nn.functional.cross_entropy(denoise(plain, x, t, ids, keep, None, **kw).transpose(1, 2), ids,
                                            reduction="none").sum(1)
    torch.testing.assert_close(ce, ref)
    assert n.tolist() == [10, 10]


def test_conditioning_positions_stay_clean_and_solvers_count_their_calls():
    model = tiny()
    ids = torch.randint(0, 39, (2, 12))
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, :4] = True  # a prefix
    keep[:, 9] = True  # and an infilling position
    for solver, steps, nfe in (("euler", 6, 6), ("heun", 6, 11), ("dpmpp_2m", 6, 6)):
        tokens, calls = sample_tokens(model, ids, keep, steps=steps, solver=solver,
                                      generator=torch.Generator().manual_seed(0))
        assert calls == nfe and torch.equal(tokens[keep], ids[keep])
    _, calls = sample_tokens(model, ids, keep, steps=4, guidance_scale=2.0)
    assert calls == 8  # CFG: a conditional and an unconditional pass per step
    a, _ = sample_tokens(model, ids, keep, steps=4, decode="argmax", generator=torch.Generator().manual_seed(5))
    b, _ = sample_tokens(model, ids, keep, steps=4, decode="argmax", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, match", [
    ({"solver": "low_confidence"}, "masked-diffusion rule"),
    ({"solver": "nope"}, "unknown solver"),
    ({"steps": 0}, "steps must be >= 1"),
    ({"decode": "round"}, "decode must be one of"),
])
def test_bad_sampling_input_is_one_line(kwargs, match):
    model = tiny()
    with pytest.raises(ValueError, match=match):
        sample_tokens(model, torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.bool),
                      **{"steps": 2, **kwargs})


@pytest.mark.parametrize("kwargs, match", [
    ({"path": "vp"}, "objective.path"), ({"sigma_min": 5.0, "sigma_max": 2.0}, "sigma_min"),
    ({"self_condition": 1.5}, "self_condition"), ({"time_warp_bins": 1}, "time_warp_bins"),
])
def test_bad_options_are_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ContinuousOptions(**kwargs)


STDLIB_FILES = ("textwrap", "string", "bisect", "heapq", "fnmatch", "glob", "shlex", "copy", "queue", "sched",
                "abc", "genericpath", "posixpath", "random", "statistics", "numbers", "colorsys", "keyword",
                "calendar", "difflib")


def stdlib_corpus(path: Path) -> str:
    """A small real corpus: 20 standard-library modules as JSONL documents (the recipe's corpus, cut down)."""
    import json
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    path.write_text("\n".join(json.dumps({"text": (root / f"{m}.py").read_text()}) for m in STDLIB_FILES))
    return str(path)


def _tiny_recipe(tmp_path, steps, extra=()):
    from textdiff.config import load_recipe

    return load_recipe(RECIPE, [f"data.corpus={stdlib_corpus(tmp_path / 'corpus.jsonl')}", "data.valid_percent=10",
        "model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2",
        "model.num_key_value_heads=1", "model.intermediate_size=64", "tokenizer.vocab_size=300",
        "data.seq_len=32", "data.max_valid_blocks=8", f"trainer.max_steps={steps}", "trainer.warmup_steps=10",
        "trainer.per_device_train_batch_size=8", "trainer.eval_steps=null", "trainer.save_steps=null",
        "trainer.report_to=[]", "trainer.eval_on_start=true", "trainer.logging_steps=50", "eval.elbo_samples=2",
        "objective.time_warp_bins=20", f"run.output_dir={tmp_path / 'run'}", *extra])


def test_tiny_recipe_lowers_validation_loss_and_samples_through_the_cli(tmp_path, capsys):
    from textdiff.cli import main
    from textdiff.train.run import train_from_recipe

    torch.set_num_threads(1)
    results = train_from_recipe(_tiny_recipe(tmp_path, 60, ["trainer.learning_rate=3e-3"]), recipe_path=str(RECIPE))
    evals = [h["eval_loss"] for h in results["log_history"] if "eval_loss" in h]
    assert evals[-1] < evals[0] - 1.0, evals  # nats/token, from init
    ckpt = tmp_path / "run" / "final"
    model = load_model(ckpt)
    assert float(model.time_warp.counts.sum()) == 60 * 8
    fig = likelihood(model, [{"input_ids": torch.randint(0, 290, (4, 32))}], num_levels=2)
    assert fig["tokens"] == 128 and fig["bits_per_token"] > 0
    from textdiff.modeling.checkpoint_io import load_tokenizer

    texts, nfe = generate_texts(model, load_tokenizer(ckpt), prompts=["def "], num_samples=2, gen_length=8,
                                steps=4, return_nfe=True)
    assert len(texts) == 2 and nfe == 4
    assert main(["sample", str(ckpt), "--prompt", "import", "--steps", "4", "--gen-length", "8",
                 "--num-samples", "1", "--guidance-scale", "1"]) == 0
    assert "NFE 4" in capsys.readouterr().out
    assert main(["sample", str(ckpt), "--prompt", "x", "--sampler", "threshold"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sampler threshold is a masked-diffusion rule" in err[0]
