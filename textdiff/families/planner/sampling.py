"""Sampling a planner checkpoint: prompt -> condition slots -> DDIM over the k latent slots (the shared
`sample_continuous` loop, `DDIMSampler` with Imagen dynamic thresholding of x0 for tanh latents, the shared CFG
guider) -> the AR decoder writes the paragraph from the slots (greedy, or with temperature / top-p).

Entry points: `encode_prompts`, `sample_latents`, `decode`, `generate_paragraphs`, `reconstruct`, `sample_cli`.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import Tensor

from textdiff.modeling.inputs import l2_scaled
from textdiff.samplers.continuous import sample_continuous
from textdiff.samplers.ddim import DDIMSampler
from textdiff.samplers.guidance import ClassifierFreeGuidance

__all__ = ["decode", "encode_prompts", "generate_paragraphs", "reconstruct", "sample_cli", "sample_latents"]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def encode_prompts(model, tokenizer, prompts: list[str]) -> Tensor:
    """Condition slots [len(prompts), k, d]: each prompt (no special tokens) through the encoder."""
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if any(not r for r in rows):
        raise ValueError("an empty prompt has no tokens to encode")
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    return model.encode(ids.to(_device(model)), mask.to(_device(model)))


def build_sampler(model, *, eta: float = 0.0, thresholding: bool | None = None) -> DDIMSampler:
    """The shared DDIM step on the schedule and parameterisation the planner trained with; tanh latents get
    Imagen dynamic thresholding of x0 (0.995 quantile, uncapped), l2 latents are re-projected to norm sqrt(d)."""
    c = model.config
    tanh = c.latent_norm == "tanh"
    return DDIMSampler(beta_schedule=c.beta_schedule, prediction_type=c.prediction_type, eta=eta,
                       thresholding=tanh if thresholding is None else thresholding,
                       dynamic_thresholding_ratio=0.995, sample_max_value=None,
                       x0_hook=None if tanh else l2_scaled)


@torch.no_grad()
def sample_latents(model, condition: Tensor | None, *, num_samples: int | None = None, steps: int = 20,
                   guidance_scale: float = 1.0, eta: float = 0.0, noise: Tensor | None = None,
                   generator: torch.Generator | None = None, thresholding: bool | None = None,
                   callback=None) -> tuple[Tensor, int]:
    """(slots [B, k, d], denoiser calls per sample) by DDIM from `noise` (or fresh Gaussian noise). condition:
    [B, k, d] prompt slots, or None (unconditional, the learned null condition). guidance_scale: CFG in the
    standard convention (1 = conditional only, 0 = unconditional); callback(i, t, z, x0_hat) after every step."""
    c = model.config
    model.eval()
    if condition is None and guidance_scale != 1.0:
        raise ValueError("guidance_scale != 1 needs a condition (a prompt)")
    B = condition.shape[0] if condition is not None else num_samples
    if B is None:
        raise ValueError("pass a condition or num_samples")
    device = _device(model)
    if noise is None:
        noise = torch.randn((B, c.num_latents, c.latent_dim), generator=generator, device=device)

    def denoiser(z: Tensor, timestep: Tensor, condition: Tensor | None = None, use_condition: Tensor | None = None):
        return model.denoise(z, timestep / 1000.0, condition, use_condition)

    cond = uncond = None
    guidance = None
    if condition is not None:
        on = torch.ones(B, dtype=torch.bool, device=device)
        cond = {"condition": condition, "use_condition": on}
        if guidance_scale != 1.0:
            guidance = ClassifierFreeGuidance(scale=guidance_scale)
            uncond = {"condition": condition, "use_condition": ~on}
    out = sample_continuous(denoiser, build_sampler(model, eta=eta, thresholding=thresholding), noise,
                            num_steps=steps, cond=cond, uncond=uncond, guidance=guidance, generator=generator,
                            callback=callback)
    return out.sample, out.nfe


@torch.no_grad()
def decode(model, latents: Tensor | None, tokenizer, *, prompts: list[list[int]] | None = None,
           max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
           generator: torch.Generator | None = None, num_rows: int | None = None) -> list[list[int]]:
    """Token rows written by the decoder from slots [B, k, d] (None: the decoder alone, `num_rows` rows), after
    [bos] + the forced prompt tokens of each row; stops at EOS. temperature 0 = greedy."""
    device = _device(model)
    B = latents.shape[0] if latents is not None else (len(prompts) if prompts is not None else num_rows)
    prompts = prompts if prompts is not None else [[] for _ in range(B)]
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    bos = eos if bos is None else bos
    out = []
    for i in range(B):  # rows have their own prompt lengths; a row is short, so no batching across rows
        ids = torch.tensor([[bos, *prompts[i]]], device=device)
        z = latents[i: i + 1] if latents is not None else None
        generated: list[int] = []
        for _ in range(max_new_tokens):
            logits = model.decode_logits(z, ids)[0, -1].float()  # [V]
            if pad is not None and pad != eos:
                logits[pad] = float("-inf")
            if temperature <= 0:
                token = int(logits.argmax())
            else:
                probs = torch.softmax(logits / temperature, -1)
                if top_p < 1.0:
                    sorted_p, order = probs.sort(descending=True)
                    keep = sorted_p.cumsum(0) - sorted_p < top_p
                    probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
                token = int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
            if token == eos:
                break
            generated.append(token)
            ids = torch.cat([ids, torch.tensor([[token]], device=device)], dim=1)
        out.append(list(prompts[i]) + generated)
    return out


def _prompt_rows(tokenizer, prompts: list[str]) -> list[list[int]]:
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


@torch.no_grad()
def generate_paragraphs(model, tokenizer, prompts: list[str], *, num_samples: int = 1, steps: int = 20,
                        guidance_scale: float = 1.0, eta: float = 0.0, max_new_tokens: int = 64, seed: int = 0,
                        force_prompt: bool = True, temperature: float = 0.0, top_p: float = 1.0,
                        show_steps: int = 0) -> list[dict]:
    """For every prompt, `num_samples` paragraphs: prompt -> encoder -> planner (DDIM) -> decoder. force_prompt:
    the decoder starts from the prompt's tokens (completion); else it writes the whole paragraph from the slots.
    show_steps > 0: also the decoded x0_hat at that many evenly spaced steps. On the decoder alone (a stage-ar
    checkpoint) the prompt is continued with temperature / top-p sampling."""
    generator = torch.Generator(device=_device(model)).manual_seed(seed)
    results = []
    for prompt in prompts:
        row = _prompt_rows(tokenizer, [prompt])[0]
        forced = [row] * num_samples if force_prompt else None
        stage = getattr(model.config, "planner_stage", "planner")
        if stage == "autoencoder" or stage == "planner" and not model.has_denoiser:
            raise ValueError("a planner autoencoder has no denoiser to plan from a prompt; train "
                             "recipes/planner/stdlib_planner.yaml from it")
        if stage == "ar":  # the decoder alone
            rows = decode(model, None, tokenizer, prompts=[row] * num_samples, max_new_tokens=max_new_tokens,
                          temperature=temperature, top_p=top_p, generator=generator)
            results += [{"prompt": prompt, "text": tokenizer.decode(r), "nfe": 0} for r in rows]
            continue
        condition = encode_prompts(model, tokenizer, [prompt]).expand(num_samples, -1, -1)
        snapshots: list[tuple[int, Tensor]] = []
        keep_at = set(torch.linspace(0, steps - 1, show_steps).round().long().tolist()) if show_steps else set()

        def keep(i, t, z, x0_hat, keep_at=keep_at, snapshots=snapshots):
            if i in keep_at:
                snapshots.append((int(t), x0_hat.clone()))

        latents, nfe = sample_latents(model, condition, steps=steps, guidance_scale=guidance_scale, eta=eta,
                                      generator=generator, callback=keep if show_steps else None)
        rows = decode(model, latents, tokenizer, prompts=forced, max_new_tokens=max_new_tokens,
                      temperature=temperature, top_p=top_p, generator=generator)
        steps_text = [[{"timestep": t, "text": tokenizer.decode(r)}
                       for t, x0 in snapshots
                       for r in decode(model, x0[j: j + 1], tokenizer, prompts=forced and forced[:1],
                                       max_new_tokens=max_new_tokens)] for j in range(num_samples)]
        for j, r in enumerate(rows):
            result = {"prompt": prompt, "text": tokenizer.decode(r), "nfe": nfe}
            if show_steps:
                result["steps"] = steps_text[j]
            results.append(result)
    return results


@torch.no_grad()
def reconstruct(model, tokenizer, paragraphs: list[str], *, max_tokens: int = 64) -> list[dict]:
    """The upper bound of the planner: encode each true paragraph, decode greedily from its slots. Returns
    {"reference", "reconstruction", "token_accuracy"} per paragraph (accuracy over the reference's positions,
    EOS included)."""
    out = []
    for text in paragraphs:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
        z = model.encode(torch.tensor([ids], device=_device(model)))
        row = decode(model, z, tokenizer, max_new_tokens=len(ids) + 1)[0]
        target = ids + [tokenizer.eos_token_id]
        got = row + [tokenizer.eos_token_id]
        hits = sum(int(i < len(got) and got[i] == tok) for i, tok in enumerate(target))
        out.append({"reference": tokenizer.decode(ids), "reconstruction": tokenizer.decode(row),
                    "token_accuracy": hits / len(target), "reference_ids": ids, "reconstruction_ids": row})
    return out


def sample_cli(checkpoint: str, config: dict, args: argparse.Namespace) -> int:
    """`textdiff sample` on a planner checkpoint: --prompt (repeatable), --steps (DDIM steps; 20 recommended),
    --guidance-scale (CFG, standard convention, 1 = off), --num-samples, --gen-length (decoder tokens),
    --temperature (decoder; 0 = greedy), --show-steps (decoded x0_hat at 5 steps), --seed, --json."""
    from textdiff.modeling.checkpoint_io import load_model, load_tokenizer

    for flag, bad in (("--cache", args.cache != "none"), ("--threshold", args.threshold is not None),
                      ("--factor", args.factor is not None), ("--alg-temp", args.alg_temp is not None),
                      ("--cfg-scale", args.cfg_scale != 0.0), ("--sampler", args.sampler != "low_confidence")):
        if bad:
            raise ValueError(f"{flag} is a masked-diffusion option; a planner checkpoint samples with DDIM "
                             f"(--steps, --guidance-scale, --num-samples, --show-steps)")
    if args.solver not in ("euler", "ddim"):
        raise ValueError(f"--solver {args.solver}: the planner trained on a VP path and samples with ddim only")
    tokenizer, model = load_tokenizer(checkpoint), load_model(checkpoint)
    results = generate_paragraphs(model, tokenizer, list(args.prompt), num_samples=args.num_samples,
                                  steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed,
                                  max_new_tokens=args.gen_length, temperature=args.temperature,
                                  top_p=0.9 if config.get("planner_stage") == "ar" else 1.0,
                                  show_steps=5 if args.show_steps else 0)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"--- prompt: {r['prompt']!r}  (NFE {r['nfe']})\n{r['text']}")
        for s in r.get("steps", []):
            print(f"    x0_hat at t={s['timestep']}: {s['text']}")
        print()
    return 0
