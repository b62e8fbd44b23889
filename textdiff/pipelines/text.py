"""Prompt strings in, generated strings out: the glue between a tokenizer and the generation loops."""

from __future__ import annotations

import argparse

import torch

from textdiff.data import SFTCollator
from textdiff.samplers.generate import generate, generate_autoregressive


def left_pad(rows: list[list[int]], pad_token_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows of different lengths as one left-padded batch, the layout `textdiff.generate` decodes (and TRL
    scores) prompts in: returns (input_ids [B, P], attention_mask [B, P], 0 on padding)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long, device=device)  # [B, P]
    attention_mask = torch.zeros_like(input_ids)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long, device=device)
        attention_mask[i, width - len(r) :] = 1
    return input_ids, attention_mask


def decode_completion(tokenizer, generated: list[int], mask_token_id: int | None = None) -> str:
    """Text of generated ids: cut at the first EOS (what follows is padding), drop any [MASK] left over."""
    eos = tokenizer.eos_token_id
    if eos is not None and eos in generated:
        generated = generated[: generated.index(eos)]
    return tokenizer.decode([i for i in generated if i != mask_token_id])


@torch.no_grad()
def decode_rows(
    model,
    tokenizer,
    rows: list[list[int]],
    *,
    gen_length: int,
    steps: int,
    block_length: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    **generate_options,
) -> tuple[list[str], int]:
    """(completions, forward passes) of encoded prompts `rows`: one left-padded `textdiff.generate` call (identical
    to decoding them one by one), or greedy KV-cached decoding row by row for a causal model, which takes no
    sampling options. `generate_options` (sampler, cache, cfg_scale, callback, rule options, ...) go to generate."""
    device = next(model.parameters()).device
    mask_id = model.config.mask_token_id
    if model.config.attention_mode == "causal":
        if temperature != 0 or generator is not None or generate_options:
            given = sorted(generate_options) + (["temperature"] if temperature != 0 else [])
            raise ValueError(f"a causal (AR) model decodes greedily; {', '.join(given) or 'generator'} would be ignored")
        outs = [generate_autoregressive(model, torch.tensor([r], device=device), gen_length=gen_length,
                                        eos_token_id=tokenizer.eos_token_id) for r in rows]
        texts = [decode_completion(tokenizer, o.sequences[0, len(r):].tolist(), mask_id) for r, o in zip(rows, outs)]
        return texts, sum(o.nfe for o in outs)
    ids, attention_mask = left_pad(rows, tokenizer.pad_token_id, device)  # [B, P]
    out = generate(model, ids, attention_mask=attention_mask, gen_length=gen_length, steps=steps,
                   block_length=block_length, temperature=temperature, generator=generator, **generate_options)
    return [decode_completion(tokenizer, row, mask_id) for row in out.sequences[:, ids.shape[1]:].tolist()], out.nfe


def sample_text(
    model,
    tokenizer,
    prompts: list[str],
    *,
    gen_length: int = 64,
    steps: int = 64,
    block_length: int = 32,
    temperature: float = 0.0,
    use_chat_template: bool | None = None,
    **generate_options,
) -> list[dict]:
    """Generate a completion per prompt (one at a time, so each reports its own number of forward passes) with the
    model's own decoder: masked diffusion with LLaDA low-confidence remasking, or greedy KV-cached decoding for a
    causal model. Prompts are encoded exactly as the SFT collator encodes them, so SFT'd models see the format they
    were trained on. `generate_options` (sampler, cache, cfg_scale, stop_at_eos, callback, rule options, ...) go
    to `textdiff.generate`."""
    encoder = SFTCollator(tokenizer, max_length=model.config.max_position_embeddings, use_chat_template=use_chat_template)
    was_training = model.training
    model.eval()
    results = []
    for prompt in prompts:
        (completion,), nfe = decode_rows(model, tokenizer, [encoder.encode_prompt(prompt)], gen_length=gen_length,
                                         steps=steps, block_length=block_length, temperature=temperature,
                                         **generate_options)
        results.append({"prompt": prompt, "completion": completion, "nfe": nfe})
    model.train(was_training)
    return results


def _show_steps(tokenizer, mask_token_id: int, prompt_length: int):
    """A generate() callback that redraws the canvas after every step: decoded text, [MASK] as a dim block."""
    from rich.console import Console
    from rich.text import Text

    console = Console()

    def show(block: int, step: int, canvas) -> None:
        text = Text(f"block {block} step {step:>3}: ", style="bold cyan")
        for token in canvas[0, prompt_length:].tolist():
            if token == mask_token_id:
                text.append("\u2591", style="dim")
            else:
                text.append(tokenizer.decode([token]).replace("\n", "\u21b5"))
        console.print(text)

    return show


def _check_text_sample_args(args: argparse.Namespace, causal: bool) -> None:
    """Reject sampling arguments that are out of range or would be silently ignored, before any weight loads."""
    from textdiff.samplers.generate import check_decoding_schedule

    visual_only = {"--guidance-scale": args.guidance_scale != 4.0, "--solver": args.solver != "euler",
                   "--shift": args.shift != 1.0, "--num-samples": args.num_samples != 8, "--output": bool(args.output)}
    given = [flag for flag, is_set in visual_only.items() if is_set]
    if given:
        raise ValueError(f"{', '.join(given)}: image / video options, but {args.checkpoint} is a text checkpoint "
                         "(text guidance is --cfg-scale)")
    if causal:  # greedy KV-cached AR decoding: only --gen-length matters
        if args.gen_length < 1:
            raise ValueError(f"--gen-length must be >= 1, got {args.gen_length}")
        masked_only = {"--temperature": args.temperature != 0, "--sampler": args.sampler != "low_confidence",
                       "--cache": args.cache != "none", "--cfg-scale": args.cfg_scale != 0,
                       "--threshold": args.threshold is not None, "--factor": args.factor is not None,
                       "--alg-temp": args.alg_temp is not None, "--schedule": args.schedule is not None,
                       "--top-k": args.top_k is not None, "--top-p": args.top_p is not None,
                       "--repetition-penalty": args.repetition_penalty is not None,
                       "--suppress-eos": args.suppress_eos,
                       "--show-steps": args.show_steps}
        given = [flag for flag, is_set in masked_only.items() if is_set]
        if given:
            raise ValueError(f"{', '.join(given)}: masked-diffusion options, but {args.checkpoint} is a causal "
                             "(AR) checkpoint, decoded greedily one token per step")
        return
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if args.cfg_scale < 0:
        raise ValueError(f"--cfg-scale must be >= 0 (0 = no guidance), got {args.cfg_scale}")
    check_decoding_schedule(args.gen_length, args.steps, args.block_length,
                            names=("--gen-length", "--steps", "--block-length"))
    from textdiff.samplers.logits import check_sampling_controls

    penalty = 1.0 if args.repetition_penalty is None else args.repetition_penalty
    check_sampling_controls(args.top_k, args.top_p, penalty, names=("--top-k", "--top-p", "--repetition-penalty"))
    # the rule's own options (threshold in [0, 1], factor > 0, an option the rule does not take, ...)
    from textdiff.samplers.registry import build_sampler

    build_sampler(args.sampler, mask_token_id=0, temperature=args.temperature, **_rule_options(args))


def _rule_options(args: argparse.Namespace) -> dict:
    names = ("threshold", "factor", "alg_temp", "schedule")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _sampling_controls(args: argparse.Namespace) -> dict:
    names = ("top_k", "top_p", "repetition_penalty")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def sample_cli(checkpoint: str, config: dict, args: argparse.Namespace) -> int:
    """`textdiff sample` for a text checkpoint (`config`: its config.json): arguments checked before any weight
    loads, then `sample_text` per prompt (optionally drawing the canvas after every step), printed or as JSON."""
    import json

    from textdiff.modeling.checkpoint_io import load_model, load_tokenizer

    _check_text_sample_args(args, causal=config.get("attention_mode") == "causal")
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(checkpoint)
    model = load_model(checkpoint)
    options = {}
    if model.config.attention_mode != "causal":
        options = dict(sampler=args.sampler, cache=args.cache, cfg_scale=args.cfg_scale, stop_at_eos=args.stop_at_eos,
                       suppress_eos=args.suppress_eos, **_rule_options(args), **_sampling_controls(args))
    results = []
    for prompt in args.prompt:
        if args.show_steps and model.config.attention_mode != "causal":
            chat = False if args.no_chat_template else None
            prompt_length = len(SFTCollator(tokenizer, max_length=10**9, use_chat_template=chat).encode_prompt(prompt))
            options["callback"] = _show_steps(tokenizer, model.config.mask_token_id, prompt_length)
        results += sample_text(model, tokenizer, [prompt], gen_length=args.gen_length, steps=args.steps,
                               block_length=args.block_length, temperature=args.temperature,
                               use_chat_template=False if args.no_chat_template else None, **options)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"--- prompt: {r['prompt']!r}  (NFE {r['nfe']})\n{r['completion']}\n")
    return 0
