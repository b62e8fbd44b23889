"""CADD (family: cadd): z = 0 is the masked model, the latent path and posterior math, the hard / soft estimates,
the temperature schedule, every masked rule through the one loop, bad input, and a tiny training run."""

import copy
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_config
from tests.test_continuous_family import stdlib_corpus
from textdiff import TextDiffModel
from textdiff.families.cadd import CaddObjective, CaddOptions, generate, likelihood, make_cadd
from textdiff.families.cadd.latent import estimate_z0, kl_weight, noise_latents, posterior_step, temperature
from textdiff.families.cadd.sampling import CaddLatentStep, check_latent_options
from textdiff.modeling.checkpoint_io import load_model, load_tokenizer
from textdiff.objectives.masked import MaskedDiffusionObjective
from textdiff.samplers import SAMPLERS
from textdiff.samplers.base import SamplerState

RECIPE = Path(__file__).parents[1] / "recipes" / "cadd" / "stdlib_pretrain.yaml"
MASK = 66


def masked_and_cadd(seed=0):
    torch.manual_seed(seed)
    masked = TextDiffModel(tiny_config()).eval()
    return masked, make_cadd(copy.deepcopy(masked), CaddOptions())


class ZeroLatents(torch.nn.Module):
    """The CADD model with every latent it is given replaced by zeros."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.embed_tokens = model, model.config, model.embed_tokens

    def forward(self, *args, latents=None, **kwargs):
        return self.model(*args, latents=torch.zeros_like(latents), **kwargs)


def test_zero_latents_give_exactly_the_masked_model_logits_and_loss():
    masked, cadd = masked_and_cadd()
    x = torch.randint(0, 60, (3, 12))
    x[:, ::3] = MASK
    reference = masked(x).logits
    z = torch.zeros(3, 12, 32)
    assert torch.equal(cadd(x, latents=z, latent_positions=x == MASK).logits, reference)
    assert torch.equal(cadd(x, latents=z).logits, reference)
    # a nonzero latent at the masked positions changes the logits (the hint is read)
    assert not torch.allclose(cadd(x, latents=torch.randn(3, 12, 32), latent_positions=x == MASK).logits, reference)
    assert sum(p.numel() for p in cadd.parameters()) == sum(p.numel() for p in masked.parameters())  # no new params

    batch = {"input_ids": torch.randint(0, 60, (4, 16))}
    plain = MaskedDiffusionObjective(mask_token_id=MASK)
    hybrid = CaddObjective(mask_token_id=MASK)
    loss_masked = plain(masked, batch, generator=torch.Generator().manual_seed(1)).loss
    loss_cadd = hybrid(ZeroLatents(cadd), batch, generator=torch.Generator().manual_seed(1)).loss
    assert torch.equal(loss_cadd, loss_masked)
    ce_masked = plain.nll(masked, batch, generator=torch.Generator().manual_seed(2))  # one t: the latent noise is drawn after the masks
    ce_only = type("CE", (CaddObjective,), {"_extra_loss": lambda self, *a, **k: None})(mask_token_id=MASK)
    ce_cadd = ce_only.nll(ZeroLatents(cadd), batch, generator=torch.Generator().manual_seed(2))
    assert torch.equal(ce_cadd[0], ce_masked[0]) and torch.equal(ce_cadd[1], ce_masked[1])


def test_training_latents_follow_the_path_at_masked_positions_and_are_z0_elsewhere():
    _, cadd = masked_and_cadd()
    ids = torch.randint(0, 60, (2, 10))
    masked = torch.rand(2, 10) < 0.5
    t = torch.tensor([0.3, 0.8])
    extras = CaddObjective(mask_token_id=MASK)._model_extras(cadd, ids, masked, t, torch.Generator().manual_seed(0))
    z0 = cadd.embed_tokens(ids).detach()
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    scale = cadd.embed_tokens.weight.detach().pow(2).mean().sqrt()
    expect = torch.where(masked[..., None], (1 - t)[:, None, None] * z0 + t[:, None, None] * scale * eps, z0)
    torch.testing.assert_close(extras["latents"], expect)
    assert torch.equal(extras["latent_positions"], masked)


@pytest.mark.parametrize("path", ["flow", "gaussian"])
def test_latent_path_has_the_stated_mean_and_variance(path):
    g = torch.Generator().manual_seed(0)
    n = 200_000
    z0 = torch.randn(1, 2, 4, generator=g).expand(n, 2, 4)
    t = torch.full((n,), 0.4)
    z = noise_latents(z0, torch.randn(z0.shape, generator=g), t, path, scale=0.5)
    mean, std = (0.6 * z0[0], 0.4 * 0.5) if path == "flow" else (math.sqrt(0.6) * z0[0], math.sqrt(0.4) * 0.5)
    torch.testing.assert_close(z.mean(0), mean, rtol=0, atol=5 * std / math.sqrt(n))
    torch.testing.assert_close(z.std(0), torch.full_like(mean, std), rtol=0.01, atol=0)


def test_flow_posterior_with_the_oracle_lands_exactly_on_z0_and_transports_the_noise():
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(3, 5, 8, generator=g), torch.randn(3, 5, 8, generator=g)
    t = torch.tensor([1.0, 0.6, 0.25])
    z_t = noise_latents(z0, eps, t, "flow", scale=0.7)
    assert torch.equal(posterior_step(z_t, z0, t, torch.zeros(3), "flow", scale=0.7), z0)
    s = torch.tensor([0.5, 0.3, 0.1])
    torch.testing.assert_close(posterior_step(z_t, z0, t, s, "flow", scale=0.7),
                               noise_latents(z0, eps, s, "flow", scale=0.7), rtol=0, atol=1e-6)
    torch.testing.assert_close(posterior_step(z_t, z0 + 1, t, t, "flow"), z_t)  # s = t: nothing moves


def test_gaussian_posterior_matches_the_closed_form():
    """q(z_s | z_t, z0) by conditioning the joint Gaussian of (z_s, z_t), computed independently of the code."""
    g = torch.Generator().manual_seed(0)
    z0, z_t = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    t, s, scale = torch.tensor([0.9, 0.5]), torch.tensor([0.6, 0.2]), 0.8
    out = posterior_step(z_t, z0, t, s, "gaussian", scale=scale, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(z_t.shape, generator=torch.Generator().manual_seed(5))
    for b in range(2):
        gs, gt = 1 - float(s[b]), 1 - float(t[b])
        a_s, a_t, var_s = math.sqrt(gs), math.sqrt(gt), (1 - gs) * scale**2
        step = gt / gs  # z_t = sqrt(step) z_s + sqrt(1 - step) scale e
        cov, var_t = math.sqrt(step) * var_s, (1 - gt) * scale**2
        mean = a_s * z0[b] + cov / var_t * (z_t[b] - a_t * z0[b])
        var = var_s - cov**2 / var_t
        torch.testing.assert_close(out[b], mean + math.sqrt(var) * noise[b], rtol=0, atol=1e-5)


def test_gaussian_posterior_with_the_oracle_keeps_the_forward_marginal():
    g = torch.Generator().manual_seed(1)
    n = 100_000
    z0 = torch.randn(1, 1, 3, generator=g).expand(n, 1, 3)
    t, s = torch.full((n,), 0.7), torch.full((n,), 0.3)
    z_t = noise_latents(z0, torch.randn(z0.shape, generator=g), t, "gaussian")
    z_s = posterior_step(z_t, z0, t, s, "gaussian", generator=g)
    torch.testing.assert_close(z_s.mean(0), math.sqrt(0.7) * z0[0], rtol=0, atol=0.02)
    torch.testing.assert_close(z_s.std(0), torch.full((1, 3), math.sqrt(0.3)), rtol=0.02, atol=0)


def test_hard_and_soft_agree_for_one_hot_and_differ_otherwise():
    table = torch.randn(10, 4)
    ids = torch.tensor([[1, 7, 3]])
    one_hot = torch.full((1, 3, 10), -torch.inf).scatter(-1, ids[..., None], 0.0)
    assert torch.equal(estimate_z0(one_hot, table, "hard"), table[ids])
    torch.testing.assert_close(estimate_z0(one_hot, table, "soft"), table[ids], rtol=0, atol=1e-6)
    logits = torch.randn(1, 3, 10)
    torch.testing.assert_close(estimate_z0(logits, table, "soft"), torch.softmax(logits, -1) @ table)
    assert not torch.allclose(estimate_z0(logits, table, "soft"), estimate_z0(logits, table, "hard"))
    # [MASK] (id 9 here) is never the estimate, even when its logit is the largest
    logits[..., 9] = 100.0
    assert not (estimate_z0(logits, table, "hard", mask_token_id=9) == table[9]).all(-1).any()


def test_temperature_schedule_endpoints_and_kl_weights():
    assert float(temperature(1.0, 2.5)) == pytest.approx(2.5)
    assert float(temperature(0.0, 2.5)) == pytest.approx(1.0)
    assert float(temperature(0.5, 3.0)) == pytest.approx(1 + 2 * math.cos(math.pi / 4))
    values = temperature(torch.linspace(0, 1, 11), 2.5)
    assert bool((values[1:] >= values[:-1]).all())
    assert torch.equal(temperature(torch.rand(5), 1.0), torch.ones(5))  # tau_max = 1: no tempering
    t = torch.tensor([0.2, 0.5])
    # -SNR'/2 by finite differences of SNR(t) = alpha^2 / sigma^2
    for path, snr in (("flow", lambda u: (1 - u) ** 2 / u**2), ("gaussian", lambda u: (1 - u) / u)):
        h = 1e-4
        numeric = -(snr(t.double() + h) - snr(t.double() - h)) / (2 * h) / 2
        torch.testing.assert_close(kl_weight(t.double(), path), numeric, rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_masked_rule_runs_with_the_latent_step(name):
    _, cadd = masked_and_cadd()
    prompt = torch.randint(0, 60, (2, 3))
    options = {"threshold": 0.5} if name == "threshold" else {"factor": 1.0} if name == "factor" else {}
    out = generate(cadd, prompt, gen_length=8, steps=4, block_length=4, sampler=name, z0="soft",
                   generator=torch.Generator().manual_seed(0), **options)
    assert out.sequences.shape == (2, 11) and not (out.sequences == MASK).any()
    # every position ends at its token's embedding (prompt from the start, the rest once revealed)
    torch.testing.assert_close(out.latents, cadd.embed_tokens.weight[out.sequences])
    if name not in ("threshold", "factor"):  # count-based rules: one forward per step, as the masked model
        assert out.nfe == 4


def test_latent_step_moves_only_the_block_positions_that_stay_masked():
    table = torch.randn(67, 32)
    step = CaddLatentStep(table=table, mask_token_id=MASK, path="flow", z0="hard", tau_max=1.0)
    before = SamplerState(torch.tensor([[5, MASK, MASK, MASK, MASK, MASK]]), torch.randn(1, 6, 32))
    after = SamplerState(torch.tensor([[5, 9, MASK, MASK, MASK, MASK]]), before.latents)
    logits = torch.randn(1, 6, 67)
    z = step.step(logits, before, after, torch.tensor([5 / 6]), torch.tensor([4 / 6]), block_length=4)
    assert torch.equal(z[0, 0], before.latents[0, 0])  # already clean: untouched
    assert torch.equal(z[0, 1], table[9])  # newly revealed: its embedding
    expect = posterior_step(before.latents, estimate_z0(logits, table, "hard", MASK), torch.tensor([5 / 6]),
                            torch.tensor([4 / 6]), "flow")
    assert torch.equal(z[0, 2:4], expect[0, 2:4])  # stay masked in the block: the posterior step
    assert torch.equal(z[0, 4:], before.latents[0, 4:])  # a later block: untouched


def test_k_latent_samples_average_the_token_probabilities():
    _, cadd = masked_and_cadd()
    prompt = torch.randint(0, 60, (2, 2))
    out = generate(cadd, prompt, gen_length=4, steps=4, block_length=4, latent_samples=3,
                   generator=torch.Generator().manual_seed(0))
    assert out.latents.shape == (2, 6, 3, 32) and out.nfe == 4 and not (out.sequences == MASK).any()
    from textdiff.families.cadd.sampling import ParticleModel

    x = torch.randint(0, 60, (2, 5))
    z = torch.randn(2, 5, 3, 32)
    pos = x > 20
    avg = ParticleModel(cadd, 3)(x, latents=z, latent_positions=pos).logits.exp()
    each = torch.stack([torch.softmax(cadd(x, latents=z[:, :, k], latent_positions=pos).logits, -1)
                        for k in range(3)])
    torch.testing.assert_close(avg, each.mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"latent_samples": 0}, "latent_samples .* >= 1, got 0"),
    ({"tau_max": 0.5}, "tau_max must be >= 1"),
    ({"z0": "medium"}, "z0 must be one of hard, soft"),
])
def test_bad_sampling_options_are_one_line(kwargs, match):
    options = {"z0": "hard", "latent_samples": 1, "tau_max": 2.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        check_latent_options(**options)
    _, cadd = masked_and_cadd()
    with pytest.raises(ValueError, match=match):
        generate(cadd, torch.zeros(1, 2, dtype=torch.long), gen_length=4, steps=4, block_length=4, **kwargs)


def test_no_mask_token_and_bad_options_are_errors():
    torch.manual_seed(0)
    model = TextDiffModel(tiny_config(mask_token_id=None))
    with pytest.raises(ValueError, match=r"family cadd needs a \[MASK\] token"):
        make_cadd(model, CaddOptions())
    from textdiff.families import get_family

    with pytest.raises(ValueError, match=r"family cadd needs a \[MASK\] token"):
        get_family("cadd").build_objective(CaddOptions(), model)
    with pytest.raises(ValueError, match="objective.latent_path must be one of flow, gaussian"):
        CaddOptions(latent_path="ve")
    with pytest.raises(ValueError, match="objective.noise_scale must be > 0"):
        CaddOptions(noise_scale=0.0)


def _save(model, tokenizer_dir, out, family):
    model.config.update({"textdiff_family": family})
    model.save_pretrained(out)
    load_tokenizer(tokenizer_dir).save_pretrained(out)
    return str(out)


def _tiny_recipe(tmp_path, steps, extra=()):
    from textdiff.config import load_recipe

    return load_recipe(RECIPE, [f"data.corpus={stdlib_corpus(tmp_path / 'corpus.jsonl')}", "data.valid_percent=30",
        "model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2",
        "model.num_key_value_heads=1", "model.intermediate_size=64", "tokenizer.vocab_size=300",
        "data.seq_len=32", "data.max_valid_blocks=8", f"trainer.max_steps={steps}", "trainer.warmup_steps=10",
        "trainer.per_device_train_batch_size=8", "trainer.eval_steps=null", "trainer.save_steps=null",
        "trainer.report_to=[]", "trainer.eval_on_start=true", "trainer.logging_steps=50", "eval.elbo_samples=2",
        "sample.prompts=[]", f"run.output_dir={tmp_path / 'run'}", *extra])


def test_tiny_recipe_lowers_validation_loss_and_samples_through_the_cli(tmp_path, capsys):
    from textdiff.cli import main
    from textdiff.train.run import train_from_recipe

    torch.set_num_threads(1)
    results = train_from_recipe(_tiny_recipe(tmp_path, 60, ["trainer.learning_rate=3e-3"]), recipe_path=str(RECIPE))
    evals = [h["eval_loss"] for h in results["log_history"] if "eval_loss" in h]
    assert evals[-1] < evals[0] - 1.0, evals  # nats/token of the full bound, from init
    ckpt = tmp_path / "run" / "final"
    model = load_model(ckpt)
    assert model.config.cadd_latent_path == "flow" and model.config.latent_projection == "identity"
    fig = likelihood(model, [{"input_ids": list(range(10, 42))}] * 4, num_samples=2)
    assert fig["tokens"] == 128 and fig["bits_per_token"] >= fig["ce_bits_per_token"] > 0

    assert main(["sample", str(ckpt), "--prompt", "import", "--steps", "4", "--gen-length", "8",
                 "--block-length", "8", "--z0", "soft", "--latent-samples", "2", "--tau-max", "2"]) == 0
    assert "NFE 4" in capsys.readouterr().out
    for flags, message in ((["--latent-samples", "0"], "--latent-samples (K latent samples per step) must be"),
                           (["--tau-max", "0.5"], "--tau-max must be >= 1"),
                           (["--sampler", "threshold", "--factor", "1"], "factor")):
        assert main(["sample", str(ckpt), "--prompt", "x", *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err

    # a masked checkpoint: the latent options are an error; a continuous one: a masked rule is an error
    masked = TextDiffModel(copy.deepcopy(model.config))
    masked.config.latent_dim = None
    masked_dir = _save(TextDiffModel(masked.config), ckpt, tmp_path / "masked", "masked")
    capsys.readouterr()
    assert main(["sample", masked_dir, "--prompt", "x", "--z0", "hard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--z0: CADD latent options" in err[0]
    from tests.test_continuous_family import tiny as tiny_continuous

    cont = tiny_continuous(path="flow")
    cont_dir = _save(cont, ckpt, tmp_path / "continuous", "continuous")
    capsys.readouterr()
    assert main(["sample", cont_dir, "--prompt", "x", "--sampler", "entropy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sampler entropy is a masked-diffusion rule" in err[0]


def test_from_masked_recipe_starts_as_the_masked_checkpoint(tmp_path):
    from textdiff.config import load_recipe
    from textdiff.families import get_family

    masked, _ = masked_and_cadd()
    tok_dir = tmp_path / "tok"
    from textdiff.data import load_tokenizer as train_tokenizer

    tokenizer = train_tokenizer("bpe", train_texts=["def f(x):\n    return x\n"] * 50, vocab_size=300,
                                cache_dir=tmp_path / "bpe")
    tokenizer.save_pretrained(tok_dir)
    cfg = tiny_config(vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id)
    masked = TextDiffModel(cfg).eval()
    init = _save(masked, tok_dir, tmp_path / "masked_ckpt", "masked")
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "cadd" / "from_masked.yaml", [
        f"model.init_from={init}", f"data.corpus={stdlib_corpus(tmp_path / 'corpus.jsonl')}", "data.seq_len=32",
        "data.valid_percent=30", f"run.output_dir={tmp_path / 'run'}", "model.max_position_embeddings=64"])
    built = get_family("cadd").build(recipe, recipe.objective, tmp_path / "run")
    x = torch.randint(0, 60, (2, 10))
    x[:, 1::2] = built.model.config.mask_token_id
    out = built.model.eval()(x, latents=torch.zeros(2, 10, 32), latent_positions=x == cfg.mask_token_id).logits
    assert torch.equal(out, masked(x).logits)
    assert isinstance(built.objective, CaddObjective)
