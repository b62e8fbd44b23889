"""The `textdiff` command: train | sample | info."""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cmd_train(args: argparse.Namespace) -> int:
    from textdiff.config import load_recipe
    from textdiff.train.run import train_from_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    results = train_from_recipe(recipe, recipe_path=args.recipe)
    ev = results["final_eval"]
    kind = "ELBO bound" if recipe.objective.name != "ar" else "exact"
    print(
        f"\nvalid NLL ({kind}): {ev['eval_loss']:.4f} nats/token = {ev['eval_bits_per_token']:.4f} bits/token, "
        f"PPL {'<= ' if kind != 'exact' else ''}{ev['eval_ppl']:.2f} over {ev['eval_tokens']} tokens"
    )
    if "task_eval" in results:
        te = results["task_eval"]
        print(f"{te['task']} {te['split']} accuracy: {te['accuracy']:.3f} over {te['problems']} problems")
    for s in results.get("samples", []):
        print(f"\n--- prompt: {s['prompt']!r}\n{s['completion']}")
    print(f"\ncheckpoint: {results['checkpoint']}\nresults:    {recipe.run.output_dir}/results.json")
    return 0


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


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from textdiff.samplers.text import sample_text

    if not os.path.isdir(args.checkpoint):
        raise FileNotFoundError(f"checkpoint directory not found: {args.checkpoint}")
    torch.manual_seed(args.seed)
    model = AutoModel.from_pretrained(args.checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    options = {}
    if model.config.attention_mode != "causal":
        options = dict(sampler=args.sampler, cache=args.cache, cfg_scale=args.cfg_scale, stop_at_eos=args.stop_at_eos,
                       suppress_eos=args.suppress_eos)
        for name in ("threshold", "factor", "alg_temp"):
            if getattr(args, name) is not None:
                options[name] = getattr(args, name)
    results = []
    for prompt in args.prompt:
        if args.show_steps and model.config.attention_mode != "causal":
            from textdiff.data import SFTCollator

            prompt_length = len(SFTCollator(tokenizer, max_length=10**9).encode_prompt(prompt))
            options["callback"] = _show_steps(tokenizer, model.config.mask_token_id, prompt_length)
        results += sample_text(model, tokenizer, [prompt], gen_length=args.gen_length, steps=args.steps,
                               block_length=args.block_length, temperature=args.temperature, **options)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"--- prompt: {r['prompt']!r}  (NFE {r['nfe']})\n{r['completion']}\n")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import importlib.metadata as md
    import platform

    import torch

    import textdiff
    from textdiff.modeling import ATTENTION_MODES
    from textdiff.objectives import OBJECTIVES

    print(f"textdiff {textdiff.__version__}  python {platform.python_version()}  ({platform.platform()})")
    for pkg in ("torch", "transformers", "datasets", "tokenizers", "accelerate", "trl", "deepspeed", "omegaconf"):
        try:
            print(f"  {pkg:<13}{md.version(pkg)}")
        except md.PackageNotFoundError:
            print(f"  {pkg:<13}not installed")
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    print(f"devices: cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), cuda: {cuda}")
    print("model families: textdiff (AutoConfig / AutoModel / AutoModelForMaskedLM / AutoModelForCausalLM)")
    print(f"  attention modes: {', '.join(ATTENTION_MODES)}")
    print(f"  objectives: {', '.join(OBJECTIVES)}")
    from textdiff.samplers import CACHE_MODES, SAMPLERS

    print(f"  samplers: {', '.join(SAMPLERS)}; cache modes: {', '.join(CACHE_MODES)}; greedy KV-cached AR for causal models")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from textdiff.samplers.generate import CACHE_MODES
    from textdiff.samplers.registry import SAMPLERS

    parser = argparse.ArgumentParser(prog="textdiff", description="diffusion language models on one backbone")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train from a recipe: textdiff train RECIPE [key=value ...]")
    train.add_argument("recipe", help="YAML recipe, e.g. recipes/masked/stdlib_pretrain.yaml")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=100")
    train.set_defaults(func=_cmd_train)

    sample = sub.add_parser("sample", help="generate from a checkpoint")
    sample.add_argument("checkpoint", help="checkpoint directory (e.g. runs/masked_stdlib/final)")
    sample.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    sample.add_argument("--steps", type=int, default=64, help="diffusion steps in total")
    sample.add_argument("--gen-length", type=int, default=64, help="tokens to generate")
    sample.add_argument("--block-length", type=int, default=32, help="semi-autoregressive block length")
    sample.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    sample.add_argument("--sampler", default="low_confidence", choices=sorted(SAMPLERS),
                        help="unmasking rule (LLaDA low_confidence/random, Dream maskgit_plus/topk_margin/entropy, "
                        "Fast-dLLM threshold/factor, MDLM ancestral)")
    sample.add_argument("--cache", default="none", choices=CACHE_MODES, help="KV cache mode (Fast-dLLM prefix/dual)")
    sample.add_argument("--threshold", type=float, help="confidence threshold of --sampler threshold (e.g. 0.9)")
    sample.add_argument("--factor", type=float, help="factor of --sampler factor (e.g. 1.0)")
    sample.add_argument("--alg-temp", dest="alg_temp", type=float, help="Dream rules: sample positions at this temperature")
    sample.add_argument("--cfg-scale", type=float, default=0.0, help="text classifier-free guidance (LLaDA scale)")
    sample.add_argument("--stop-at-eos", action="store_true", help="stop once every row has generated EOS")
    sample.add_argument("--suppress-eos", action="store_true", help="never generate EOS")
    sample.add_argument("--show-steps", action="store_true", help="print the canvas after every step")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--json", action="store_true", help="print JSON")
    sample.set_defaults(func=_cmd_sample)

    info = sub.add_parser("info", help="versions, devices and registered families")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        # Bad input: one clear line, not a traceback from deep inside a library.
        print(f"textdiff {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
