"""Entry points of the CADD family for benchmarks (`eval/families.py`) and `textdiff sample`: `generate` (one
batch through the one masked loop with the latent step), `generate_texts`, `likelihood` (the full ELBO bound and
its CE part), `objective_of`, `sample_cli`."""

from __future__ import annotations

import argparse
import math

import torch

from textdiff.families.cadd.objective import CaddObjective, latent_scale
from textdiff.families.cadd.sampling import CaddLatentStep, ParticleModel, check_latent_options
from textdiff.samplers.generate import generate as masked_generate

__all__ = ["generate", "generate_texts", "likelihood", "objective_of", "sample_cli"]

DEFAULTS = {"z0": "hard", "latent_samples": 1, "tau_max": 2.5}
"""the sampling defaults (hard hint, K = 1 as in the paper's main results, tau_max = 2.5)."""


def check_cadd_model(model) -> None:
    c = model.config
    if getattr(c, "cadd_latent_path", None) is None or c.latent_dim is None:
        raise ValueError("not a CADD-family model (its config has no cadd_latent_path / latent_dim)")
    if c.mask_token_id is None:
        raise ValueError("a CADD model needs a [MASK] token: its config has no mask_token_id")


def objective_of(model) -> CaddObjective:
    """The objective a CADD checkpoint was trained with (latent path and noise scale from its config)."""
    c = model.config
    return CaddObjective(latent_path=c.cadd_latent_path, noise_scale=c.cadd_noise_scale, mask_token_id=c.mask_token_id)


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, *, gen_length: int, steps: int, block_length: int,
             z0: str = "hard", latent_samples: int = 1, tau_max: float = 2.5,
             generator: torch.Generator | None = None, **generate_options):
    """`textdiff.generate` for a CADD model: latents start at the prompt's embeddings and at pure noise (t = 1) on
    the canvas; every step runs the masked rule (`sampler=`, default low_confidence) plus `CaddLatentStep`.
    Returns generate's output (`.sequences`, `.nfe`, `.latents`)."""
    check_cadd_model(model)
    check_latent_options(z0=z0, latent_samples=latent_samples, tau_max=tau_max)
    c = model.config
    table = model.embed_tokens.weight
    scale = latent_scale(model, c.cadd_noise_scale).to(table.dtype)
    B, P = input_ids.shape
    K = int(latent_samples)
    shape = (B, P + gen_length, K, table.shape[1]) if K > 1 else (B, P + gen_length, table.shape[1])
    latents = scale * torch.randn(shape, generator=generator, device=table.device, dtype=table.dtype)
    prompt_z = table[input_ids]  # [B, P, D]
    latents[:, :P] = prompt_z[:, :, None].expand(-1, -1, K, -1) if K > 1 else prompt_z
    step = CaddLatentStep(table=table, mask_token_id=c.mask_token_id, path=c.cadd_latent_path, z0=z0,
                          tau_max=tau_max, scale=scale, generator=generator)
    runner = ParticleModel(model, K) if K > 1 else model
    return masked_generate(runner, input_ids, gen_length=gen_length, steps=steps, block_length=block_length,
                           generator=generator, latents=latents, latent_step=step, **generate_options)


@torch.no_grad()
def generate_texts(model, tokenizer, *, prompts: list[str] | None = None, num_samples: int, gen_length: int,
                   steps: int, block_length: int | None = None, seed: int = 0, return_nfe: bool = False,
                   **options):
    """`num_samples` texts per prompt (unconditional without prompts: the canvas starts with BOS if the tokenizer
    has one). options: z0, latent_samples, tau_max, sampler, temperature, rule options."""
    from textdiff.pipelines.text import decode_completion

    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    rows = [bos] if prompts is None else [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    texts, nfe = [], 0
    for row in rows:
        ids = torch.tensor([row] * num_samples, dtype=torch.long, device=device).reshape(num_samples, len(row))
        out = generate(model, ids, gen_length=gen_length, steps=steps, block_length=block_length or gen_length,
                       generator=generator, **options)
        nfe = out.nfe
        texts += [decode_completion(tokenizer, r[len(row):], model.config.mask_token_id)
                  for r in out.sequences.tolist()]
    return (texts, nfe) if return_nfe else texts


class _CrossEntropyPart(CaddObjective):
    """The masked CE term of the CADD bound alone (no continuous KL)."""

    def _extra_loss(self, *args, **kwargs) -> None:
        return None


@torch.no_grad()
def likelihood(model, dataset, *, num_samples: int = 8, batch_size: int = 16, seed: int = 0,
               max_batches: int | None = None) -> dict:
    """The CADD ELBO on `dataset` (rows of `input_ids`): bits/token of the full bound (masked CE + the continuous KL
    of the latents) and of its CE part alone (NOT a bound: z_t carries x0). Monte Carlo over num_samples t's."""
    check_cadd_model(model)
    model.eval()
    objective = objective_of(model)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    n = len(dataset) if max_batches is None else min(len(dataset), max_batches * batch_size)
    bound, tokens = 0.0, 0.0
    for i in range(0, n, batch_size):
        ids = torch.tensor([dataset[j]["input_ids"] for j in range(i, min(i + batch_size, n))], device=device)
        total, count = objective.nll(model, {"input_ids": ids}, generator=generator, num_samples=num_samples)
        bound, tokens = bound + float(total), tokens + float(count)
    plain = _CrossEntropyPart(latent_path=objective.latent_path, noise_scale=objective.noise_scale,
                              mask_token_id=objective.mask_token_id)  # same seed: the same t's, masks and latents
    generator = torch.Generator(device=device).manual_seed(seed)
    ce = 0.0
    for i in range(0, n, batch_size):
        ids = torch.tensor([dataset[j]["input_ids"] for j in range(i, min(i + batch_size, n))], device=device)
        ce += float(plain.nll(model, {"input_ids": ids}, generator=generator, num_samples=num_samples)[0])
    ln2 = math.log(2)
    return {"bits_per_token": bound / tokens / ln2, "ce_bits_per_token": ce / tokens / ln2, "tokens": int(tokens),
            "num_samples": num_samples}


def sample_cli(checkpoint: str, config: dict, args: argparse.Namespace) -> int:
    """`textdiff sample` for a CADD checkpoint: every masked option (--sampler, --steps, --block-length, ...) plus
    --z0 hard|soft, --latent-samples K, --tau-max, all checked before any weight loads."""
    import json

    from textdiff.modeling.checkpoint_io import load_model, load_tokenizer
    from textdiff.pipelines.text import _check_text_sample_args, decode_completion, left_pad

    if config.get("mask_token_id") is None:
        raise ValueError(f"{checkpoint}: a CADD checkpoint needs a [MASK] token, its config has no mask_token_id")
    options = {k: DEFAULTS[k] if getattr(args, k, None) is None else getattr(args, k) for k in DEFAULTS}
    check_latent_options(**options, names=("--z0", "--latent-samples", "--tau-max"))
    _check_text_sample_args(args, causal=False)
    if args.show_steps:
        raise ValueError("--show-steps is not supported for CADD checkpoints")
    torch.manual_seed(args.seed)
    tokenizer, model = load_tokenizer(checkpoint), load_model(checkpoint).eval()
    rule = {k: getattr(args, k) for k in ("threshold", "factor", "alg_temp") if getattr(args, k) is not None}
    generator = torch.Generator().manual_seed(args.seed)
    results = []
    for prompt in args.prompt:
        ids, mask = left_pad([tokenizer(prompt, add_special_tokens=False)["input_ids"]], tokenizer.pad_token_id)
        out = generate(model, ids, attention_mask=mask, gen_length=args.gen_length, steps=args.steps,
                       block_length=args.block_length, sampler=args.sampler, temperature=args.temperature,
                       cache=args.cache, cfg_scale=args.cfg_scale, stop_at_eos=args.stop_at_eos,
                       suppress_eos=args.suppress_eos, generator=generator, **options, **rule)
        text = decode_completion(tokenizer, out.sequences[0, ids.shape[1]:].tolist(), model.config.mask_token_id)
        results.append({"prompt": prompt, "completion": text, "nfe": out.nfe})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"--- prompt: {r['prompt']!r}  (NFE {r['nfe']})\n{r['completion']}\n")
    return 0
