"""Latent planner + AR decoder (family: planner): the autoencoder learns to reconstruct held-out rows, the true
slots + greedy decoding reproduce a memorised set, the planner's loss falls, CFG at 0 / 1 is uncond / cond, the
decoder is causal over the text, DDIM eta = 0 is deterministic given the noise, and bad input is one line."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from textdiff.families.planner import (
    PlannerConfig,
    PlannerModel,
    PlannerOptions,
    build_decoder,
    sample_latents,
)
from textdiff.families.planner.data import ParagraphCollator
from textdiff.families.planner.objective import AutoencoderObjective, PlannerObjective, p2_weight
from textdiff.families.planner.sampling import decode
from textdiff.modeling import TextDiffConfig
from textdiff.samplers.guidance import ClassifierFreeGuidance
from textdiff.schedules import vp_alphas_cumprod

RECIPES = Path(__file__).parents[1] / "recipes" / "planner"
PAD, BOS, EOS, V = 0, 1, 2, 24  # token ids 3..23 are "words"
TOK = SimpleNamespace(pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)


def tiny(*, denoiser_layers=0, k=4, d=16, seed=0, prediction_type="sample") -> PlannerModel:
    torch.manual_seed(seed)
    decoder = TextDiffConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=32, attention_mode="causal",
                             prefix_dim=d, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    config = PlannerConfig(vocab_size=V, hidden_size=32, encoder_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=k + 12, num_latents=k, latent_dim=d,
                           denoiser_layers=denoiser_layers, denoiser_hidden_size=32, denoiser_heads=2,
                           prediction_type=prediction_type, ar_decoder=decoder.to_dict())
    return PlannerModel(config)


COLLATE = ParagraphCollator(pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, prompt_tokens=2)


def random_rows(n, length, generator):
    return [{"input_ids": torch.randint(3, V, (length,), generator=generator).tolist()} for _ in range(n)]


@torch.no_grad()
def teacher_forced_accuracy(model, rows) -> float:
    batch = COLLATE(rows)
    z = model.encode(batch["input_ids"], batch["attention_mask"])
    pred = model.decode_logits(z, batch["decoder_input_ids"]).argmax(-1)
    scored = batch["labels"] != -100
    return float((pred == batch["labels"])[scored].float().mean())


def train_autoencoder(model, rows_fn, steps, lr=3e-3):
    objective = AutoencoderObjective()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        loss = objective(model, COLLATE(rows_fn(step))).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def test_held_out_reconstruction_accuracy_rises_from_init():
    """Uniformly random rows: no unigram or bigram statistic helps, only copying through the k slots does."""
    model = tiny()
    g = torch.Generator().manual_seed(0)
    held_out = random_rows(64, 6, torch.Generator().manual_seed(123))
    before = teacher_forced_accuracy(model, held_out)
    train_autoencoder(model, lambda step: random_rows(32, 6, g), steps=250)
    after = teacher_forced_accuracy(model, held_out)
    chance = 1 / (V - 3)
    assert before < 2 * chance and after > 0.3, (before, after)


def test_true_slots_and_greedy_decoding_reproduce_a_memorised_set():
    """The planner's upper bound: encoder(true paragraph) -> greedy decoder, measured on a memorised set."""
    model = tiny()
    rows = random_rows(4, 6, torch.Generator().manual_seed(1))
    train_autoencoder(model, lambda step: rows, steps=150)
    batch = COLLATE(rows)
    z = model.encode(batch["input_ids"], batch["attention_mask"])
    decoded = decode(model, z, TOK, max_new_tokens=8)
    exact = sum(d == r["input_ids"] for d, r in zip(decoded, rows)) / len(rows)
    assert exact == 1.0, decoded


def test_p2_weight_and_target_conversion():
    abar = vp_alphas_cumprod("cosine", 1000)
    snr = abar / (1 - abar)
    torch.testing.assert_close(p2_weight(abar, 1.0, 1.0), 1 / (1 + snr))
    torch.testing.assert_close(p2_weight(abar, 1.0, 0.0), torch.ones_like(abar))
    # x0 prediction, loss on eps: the exact x0 gives zero loss; an error e in x0 costs w * (alpha / sigma)^2 e^2
    model = tiny(denoiser_layers=1)
    objective = PlannerObjective(prediction_type="sample", loss_on="epsilon")
    x0, noise = torch.rand(2, 4, 16) * 2 - 1, torch.randn(2, 4, 16)
    t = torch.tensor([100, 700])
    a, s = abar[t].sqrt()[:, None, None], (1 - abar[t]).sqrt()[:, None, None]
    model.denoise = lambda z_t, tt, c, u: x0 + 0.1  # a fixed x0 error of 0.1
    got = objective.losses(model, x0, x0, t, noise, torch.ones(2, dtype=torch.bool))
    want = p2_weight(abar[t]) * ((a / s) ** 2 * 0.01).flatten()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_planner_loss_falls():
    model = tiny(denoiser_layers=1)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("denoiser", "condition_in", "null_condition")))
    objective = PlannerObjective(cond_dropout=0.1)
    rows = random_rows(32, 6, torch.Generator().manual_seed(2))
    batch = COLLATE(rows)

    def valid() -> float:
        total, n = objective.nll(model, batch, generator=torch.Generator().manual_seed(0), num_samples=8)
        return float(total / n)

    before = valid()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(150):
        loss = objective(model, batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert valid() < 0.7 * before


def _planner_with_live_head(seed=0):
    model = tiny(denoiser_layers=1, seed=seed).eval()
    with torch.no_grad():  # the zero-init head would make every prediction 0 and the tests below trivial
        model.denoiser_out.weight.normal_(std=0.5)
        model.null_condition.normal_()
    return model


def test_cfg_scale_zero_is_uncond_and_one_is_cond():
    model = _planner_with_live_head()
    condition = torch.rand(3, 4, 16) * 2 - 1
    noise = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(0))
    cond, _ = sample_latents(model, condition, steps=5, guidance_scale=1.0, noise=noise)
    uncond, _ = sample_latents(model, None, num_samples=3, steps=5, noise=noise)
    at_zero, nfe = sample_latents(model, condition, steps=5, guidance_scale=0.0, noise=noise)
    assert nfe == 10 and not torch.allclose(cond, uncond)  # the condition matters
    assert torch.equal(at_zero, uncond)
    guided, _ = sample_latents(model, condition, steps=5, guidance_scale=3.0, noise=noise)
    assert not torch.allclose(guided, cond)
    c, u = torch.randn(2, 4, 16), torch.randn(2, 4, 16)  # the guider itself returns its inputs exactly
    assert torch.equal(ClassifierFreeGuidance(scale=1.0)(c, u), c)
    assert torch.equal(ClassifierFreeGuidance(scale=0.0)(c, u), u)


def test_decoder_never_attends_to_future_text_tokens():
    model = tiny().eval()
    z = torch.rand(2, 4, 16)
    ids = torch.randint(3, V, (2, 10), generator=torch.Generator().manual_seed(0))
    base = model.decode_logits(z, ids)
    for j in (3, 9):
        changed = ids.clone()
        changed[:, j] = (changed[:, j] + 5) % V
        out = model.decode_logits(z, changed)
        assert torch.equal(out[:, :j], base[:, :j])
        assert not torch.allclose(out[:, j:], base[:, j:])
    assert not torch.allclose(model.decode_logits(z + 0.5, ids)[:, 0], base[:, 0])  # every position reads the slots


def test_ddim_eta_zero_is_deterministic_given_the_noise():
    model = _planner_with_live_head()
    condition = torch.rand(2, 4, 16) * 2 - 1
    noise = torch.randn(2, 4, 16)
    a, _ = sample_latents(model, condition, steps=8, noise=noise, generator=torch.Generator().manual_seed(1))
    b, _ = sample_latents(model, condition, steps=8, noise=noise, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c, _ = sample_latents(model, condition, steps=8, eta=1.0, noise=noise, generator=torch.Generator().manual_seed(1))
    d, _ = sample_latents(model, condition, steps=8, eta=1.0, noise=noise, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(c, d)
    assert a.abs().max() <= 1.0 + 1e-6  # tanh latents: dynamic thresholding keeps the final x0 in [-1, 1]


def test_bad_input_prompt_longer_than_encoder_context():
    model = tiny()
    with pytest.raises(ValueError, match=r"longer than the encoder's context: 4 slots \+ 13 tokens > "
                                         r"max_position_embeddings 16"):
        model.encode(torch.full((1, 13), 5))


def test_bad_input_k_zero():
    with pytest.raises(ValueError, match=r"objective.num_latents must be >= 1 \(k = 0 slots"):
        PlannerOptions(num_latents=0)
    with pytest.raises(ValueError, match="num_latents"):
        PlannerConfig(num_latents=0)


def test_bad_input_decoder_width_mismatch(tmp_path):
    from textdiff.modeling import TextDiffModel

    cfg = TextDiffConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=32, attention_mode="causal")
    TextDiffModel(cfg).save_pretrained(tmp_path / "dec")
    with pytest.raises(ValueError, match=r"has width 32 but the slots -> embedding adapter maps to "
                                         r"objective.adapter_width 48"):
        build_decoder(str(tmp_path / "dec"), tokenizer=None, latent_dim=16, model_cfg=None, out=tmp_path,
                      adapter_width=48)


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    from textdiff.cli import main

    recipe = str(RECIPES / "stdlib_autoencoder.yaml")
    assert main(["train", recipe, f"run.output_dir={tmp_path}", "objective.num_latents=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "num_latents" in err
