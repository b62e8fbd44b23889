"""Stable entry points of the continuous family for benchmarks (`eval/families.py`) and `textdiff sample`:
`generate_texts` (unconditional or prefix-conditioned text), `likelihood` (the CE-based figure in bits/token),
`sample_cli`."""

from __future__ import annotations

import argparse
import math

import torch

from textdiff.families.continuous.objective import ContinuousObjective
from textdiff.families.continuous.sampling import check_solver, sample_tokens

__all__ = ["generate_texts", "likelihood", "objective_of", "sample_cli"]


def objective_of(model) -> ContinuousObjective:
    """The objective a continuous checkpoint was trained with (its path and sigma range, from its config)."""
    c = model.config
    return ContinuousObjective(path=c.continuous_path, sigma_min=c.continuous_sigma_min,
                               sigma_max=c.continuous_sigma_max)


def _check_continuous(model) -> None:
    if getattr(model.config, "continuous_path", None) is None or not hasattr(model, "time_warp"):
        raise ValueError("not a continuous-family model (its config has no continuous_path / time_warp_bins)")


@torch.no_grad()
def generate_texts(model, tokenizer, *, prompts: list[str] | None = None, num_samples: int, gen_length: int,
                   steps: int, seed: int = 0, return_nfe: bool = False, **sampler_options):
    """`num_samples` texts of `gen_length` tokens (per prompt when `prompts` is given: prefix-conditioned, the
    prompt kept clean; unconditional otherwise), `steps` solver steps. sampler_options go to `sample_tokens`
    (solver, self_condition, decode, guidance_scale). Returns the completions (without the prompt), and with
    return_nfe=True also the forward passes per sample."""
    _check_continuous(model)
    if num_samples < 1 or gen_length < 1:
        raise ValueError(f"num_samples and gen_length must be >= 1, got {num_samples}, {gen_length}")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    rows = [[]] if prompts is None else [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    texts, nfe = [], 0
    for row in rows:
        L = len(row) + gen_length
        if L > model.config.max_position_embeddings:
            raise ValueError(f"prompt + gen_length = {L} tokens exceeds max_position_embeddings "
                             f"{model.config.max_position_embeddings}")
        ids = torch.full((num_samples, L), model.config.mask_token_id, dtype=torch.long, device=device)
        ids[:, : len(row)] = torch.tensor(row, dtype=torch.long, device=device)
        keep = torch.zeros_like(ids, dtype=torch.bool)
        keep[:, : len(row)] = True
        tokens, nfe = sample_tokens(model, ids, keep, steps=steps, generator=generator, **sampler_options)
        texts += [tokenizer.decode(r[len(row):]) for r in tokens.tolist()]
    return (texts, nfe) if return_nfe else texts


@torch.no_grad()
def likelihood(model, dataset_or_batches, *, num_levels: int = 8, batch_size: int = 16, seed: int = 0,
               max_batches: int | None = None) -> dict:
    """The CE figure CDCD trains and reports: the clean-token cross-entropy of the score-interpolation denoiser,
    averaged over noise levels t on a stratified uniform grid of `num_levels` levels (unconditional,
    self-conditioned as the sampler is). Returns {"bits_per_token", "nats_per_token", "tokens", "num_levels"}.
    `dataset_or_batches`: a dataset of `input_ids` rows or an iterable of {"input_ids": [B, L]} batches."""
    _check_continuous(model)
    model.eval()
    objective = objective_of(model)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    if hasattr(dataset_or_batches, "column_names") or hasattr(dataset_or_batches, "__getitem__") and not isinstance(
            dataset_or_batches, (list, tuple)):
        n = len(dataset_or_batches)
        batches = ({"input_ids": torch.tensor([dataset_or_batches[j]["input_ids"]
                                               for j in range(i, min(i + batch_size, n))])}
                   for i in range(0, n, batch_size))
    else:
        batches = iter(dataset_or_batches)
    nats, tokens = 0.0, 0.0
    for k, batch in enumerate(batches):
        if max_batches is not None and k >= max_batches:
            break
        batch = {key: v.to(device) for key, v in batch.items() if key in ("input_ids", "attention_mask")}
        total, count = objective.nll(model, batch, generator=generator, num_samples=num_levels)
        nats, tokens = nats + float(total), tokens + float(count)
    if tokens == 0:
        raise ValueError("likelihood got no tokens (an empty dataset?)")
    return {"bits_per_token": nats / tokens / math.log(2), "nats_per_token": nats / tokens, "tokens": int(tokens),
            "num_levels": num_levels}


def sample_cli(checkpoint: str, config: dict, args: argparse.Namespace) -> int:
    """`textdiff sample` for a continuous checkpoint: --solver (euler | heun | ...), --steps, --gen-length,
    --guidance-scale (CFG, standard convention), --num-samples, --seed; a masked --sampler rule is an error."""
    import json

    from textdiff.modeling.checkpoint_io import load_model, load_tokenizer
    from textdiff.samplers.registry import REGISTRY

    if args.sampler != "low_confidence" and REGISTRY[args.sampler].kind == "masked":
        raise ValueError(f"--sampler {args.sampler} is a masked-diffusion rule; a continuous checkpoint samples "
                         f"with --solver euler | heun | dpmpp_2m")
    check_solver(args.solver)
    for flag, bad in (("--cache", args.cache != "none"), ("--threshold", args.threshold is not None),
                      ("--factor", args.factor is not None), ("--alg-temp", args.alg_temp is not None),
                      ("--cfg-scale", args.cfg_scale != 0.0), ("--show-steps", args.show_steps),
                      ("--temperature", args.temperature != 0.0)):
        if bad:
            raise ValueError(f"{flag} is a masked-diffusion option; a continuous checkpoint does not take it")
    tokenizer, model = load_tokenizer(checkpoint), load_model(checkpoint)
    results = []
    for prompt in args.prompt:
        texts, nfe = generate_texts(model, tokenizer, prompts=[prompt], num_samples=args.num_samples,
                                    gen_length=args.gen_length, steps=args.steps, seed=args.seed, return_nfe=True,
                                    solver=args.solver, guidance_scale=args.guidance_scale)
        results += [{"prompt": prompt, "completion": t, "nfe": nfe} for t in texts]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"--- prompt: {r['prompt']!r}  (NFE {r['nfe']})\n{r['completion']}\n")
    return 0
