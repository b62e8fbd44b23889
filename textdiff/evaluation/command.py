"""The `textdiff eval` and `textdiff bench` command lines: arguments, defaults read from the checkpoint's run,
the rich summary of eval (the logic: textdiff/evaluation/run.py and bench.py).

    textdiff eval runs/quickstart/final                       # likelihood + samples (gen-PPL, distinct-n, ...)
    textdiff eval runs/masked_arithmetic/final --sampler threshold --threshold 0.9 --cache dual
    textdiff eval CKPT --metrics likelihood --corpus stdlib --mc-num 64 --judge none
    textdiff bench runs/masked_arithmetic_gen32/final --ar runs/ar_arithmetic/final --problems 50
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from textdiff.evaluation.run import EVAL_METRICS, evaluate_checkpoint, run_config

__all__ = ["add_bench_arguments", "add_eval_arguments", "bench_cli", "eval_cli", "summary_tables"]


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    from textdiff.samplers.generate import CACHE_MODES
    from textdiff.samplers.registry import SAMPLERS

    parser.add_argument("checkpoint", help="checkpoint directory (e.g. runs/quickstart/final)")
    parser.add_argument("--metrics", help=f"comma-separated, from {', '.join(EVAL_METRICS)} (default: all that the "
                        "corpus, task and prompts allow; distinct_n/self_bleu/repetition_rate/generative_perplexity "
                        "need prompts, ast_parse defaults on for the stdlib corpus)")
    parser.add_argument("--output", help="JSON report (default: CKPT/eval.json)")
    data = parser.add_argument_group("likelihood (default corpus: the one the run trained on)")
    data.add_argument("--corpus", help="stdlib, or local text files / a directory")
    data.add_argument("--split", default="valid", choices=("valid", "train"), help="corpus split")
    data.add_argument("--seq-len", type=int, help="tokens per scored block (default: the run's data.seq_len or 128)")
    data.add_argument("--max-blocks", type=int, default=32, help="blocks scored")
    data.add_argument("--mc-num", type=int, default=32, help="Monte Carlo ELBO draws per block (masked models)")
    task = parser.add_argument_group("task accuracy (default task: the one the run was SFT'd on)")
    task.add_argument("--task", help="arithmetic | countdown | sudoku")
    task.add_argument("--task-split", default="test", choices=("train", "valid", "test"))
    task.add_argument("--problems", type=int, default=50, help="problems decoded")
    samples = parser.add_argument_group("samples (default prompts: the run's sample.prompts)")
    samples.add_argument("--prompt", action="append", help="prompt (repeatable)")
    samples.add_argument("--num-samples", type=int, help="samples per prompt (default 1 at temperature 0, else 4)")
    samples.add_argument("--judge", default="smollm2", help="causal LM of the generative perplexity: smollm2 "
                         "(SmolLM2-135M-Instruct, offline), a causal-LM checkpoint directory, or none")
    decoding = parser.add_argument_group("decoding of samples and task problems (default: the run's sample section)")
    decoding.add_argument("--gen-length", type=int)
    decoding.add_argument("--steps", type=int)
    decoding.add_argument("--block-length", type=int)
    decoding.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    decoding.add_argument("--sampler", default="low_confidence", choices=sorted(SAMPLERS), help="unmasking rule")
    decoding.add_argument("--cache", default="none", choices=CACHE_MODES, help="KV cache mode")
    decoding.add_argument("--threshold", type=float, help="confidence threshold of --sampler threshold")
    decoding.add_argument("--factor", type=float, help="factor of --sampler factor")
    decoding.add_argument("--alg-temp", dest="alg_temp", type=float, help="Dream rules: position temperature")
    decoding.add_argument("--cfg-scale", type=float, help="text classifier-free guidance (LLaDA scale)")
    decoding.add_argument("--top-k", dest="top_k", type=int, help="sample among the k most likely tokens only")
    decoding.add_argument("--top-p", dest="top_p", type=float, help="sample within the nucleus of probability p")
    decoding.add_argument("--repetition-penalty", dest="repetition_penalty", type=float,
                          help="CTRL penalty (> 1) on every token already on the canvas")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _default_metrics(corpus, task, prompts, judge) -> tuple[str, ...]:
    metrics = []
    if corpus:
        metrics.append("likelihood")
    if task:
        metrics.append("task_accuracy")
    if prompts:
        metrics += ([] if judge == "none" else ["generative_perplexity"]) + ["distinct_n", "self_bleu",
                                                                             "repetition_rate"]
        if corpus == "stdlib":
            metrics.append("ast_parse")
    if not metrics:
        raise ValueError("nothing to evaluate: give --corpus, --task or --prompt (the checkpoint's run names none)")
    return tuple(metrics)


def eval_cli(args: argparse.Namespace) -> int:
    """`textdiff eval`: resolve the defaults from the checkpoint's run, evaluate, write JSON, print the tables."""
    from textdiff.modeling.checkpoint_io import check_checkpoint

    check_checkpoint(args.checkpoint)  # a missing or foreign checkpoint first, before any default is read
    run = run_config(args.checkpoint)
    data, sample = run.get("data") or {}, run.get("sample") or {}
    corpus = args.corpus or data.get("corpus")
    task = args.task or data.get("task")
    task_kwargs = dict(data.get("task_kwargs") or {}) if task == data.get("task") else {}
    prompts = args.prompt or list(sample.get("prompts") or [])
    metrics = (tuple(m.strip() for m in args.metrics.split(",") if m.strip()) if args.metrics
               else _default_metrics(corpus, task, prompts, args.judge))
    num_samples = args.num_samples if args.num_samples is not None else (1 if args.temperature == 0 else 4)
    options = {k: v for k, v in (("sampler", args.sampler), ("cache", args.cache), ("threshold", args.threshold),
                                 ("factor", args.factor), ("alg_temp", args.alg_temp), ("cfg_scale", args.cfg_scale),
                                 ("top_k", args.top_k), ("top_p", args.top_p),
                                 ("repetition_penalty", args.repetition_penalty))
               if v is not None and not (k == "sampler" and v == "low_confidence") and not (k == "cache" and v == "none")}
    report = evaluate_checkpoint(
        args.checkpoint, metrics=metrics, corpus=corpus, corpus_split=args.split,
        valid_percent=float(data.get("valid_percent", 2.0)), seq_len=args.seq_len or int(data.get("seq_len") or 128),
        max_blocks=args.max_blocks, mc_num=args.mc_num, task=task, task_kwargs=task_kwargs,
        task_split=args.task_split, problems=args.problems, prompts=prompts, num_samples=num_samples,
        gen_length=args.gen_length or int(sample.get("gen_length", 64)), steps=args.steps or int(sample.get("steps", 64)),
        block_length=args.block_length or int(sample.get("block_length", 32)), temperature=args.temperature,
        judge=args.judge, seed=args.seed, progress=not args.no_progress, **options)
    report["command"] = "textdiff eval " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["eval"] else sys.argv[1:])
    out = Path(args.output) if args.output else Path(args.checkpoint) / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    from rich.console import Console

    console = Console()
    for table in summary_tables(report):
        console.print(table)
    console.print(f"report: {out}")
    return 0


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_tables(report: dict) -> list:
    """Rich renderables of a report: the numbers, then a few samples beside held-out text."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"textdiff eval {report['checkpoint']} ({report['family']})", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("held-out text", justify="right")
    table.add_column("note")
    if "likelihood" in report:
        lk = report["likelihood"]
        how = f"ELBO bound, {lk['mc_num']} MC draws" if lk["bound"] else "exact"
        where = f"{lk['corpus']} {lk['split']}, {lk['blocks']} x {lk['seq_len']} tokens"
        table.add_row("NLL (nats/token)", _fmt(lk["nll"]), "", f"{how}; {where}")
        table.add_row("PPL" + (" <=" if lk["bound"] else ""), _fmt(lk["ppl"]), "", "")
    if "task" in report:
        t = report["task"]
        table.add_row(f"{t['task']} accuracy", _fmt(t["accuracy"]), "", f"{t['problems']} {t['split']} problems, "
                      f"{_decoding(t['decoding'])}")
    if "samples" in report:
        s = report["samples"]
        ref = (s.get("reference") or {}).get("metrics", {})
        note = f"{len(s['texts'])} samples, {_decoding(s['decoding'])}"
        for i, (name, value) in enumerate(s["metrics"].items()):
            if name == "judge_tokens":
                continue
            label = f"gen-PPL ({s['judge']})" if name == "generative_perplexity" else name
            table.add_row(label, _fmt(value), _fmt(ref.get(name)), note if i == 0 else "")
    renderables = [table]
    if "samples" in report:
        samples = Table(title="the first sample of each prompt (up to 4) and held-out text", title_justify="left",
                        show_lines=True)
        samples.add_column("sample")
        samples.add_column("held-out text")
        ref_texts = (report["samples"].get("reference") or {}).get("texts", [])
        per_prompt = report["samples"]["num_samples"]
        for i in range(0, min(len(report["samples"]["texts"]), 4 * per_prompt), per_prompt):
            text = report["samples"]["texts"][i]
            samples.add_row(Text(text), Text(ref_texts[i] if i < len(ref_texts) else ""))  # not rich markup
        renderables.append(samples)
    return renderables


def _decoding(d: dict) -> str:
    rule = d.get("sampler", "low_confidence") + (f" + {d['cache']}" if d.get("cache", "none") != "none" else "")
    controls = "".join(f", {label} {d[key]:g}" for key, label in (("top_k", "top-k"), ("top_p", "top-p"),
                                                                   ("repetition_penalty", "rep. penalty"))
                       if d.get(key) is not None)
    return (f"{rule}, gen {d['gen_length']}, {d['steps']} steps, block {d['block_length']}, T={d['temperature']:g}"
            f"{controls}")


# ------------------------------------------------------------------------------------------------ textdiff bench

BENCH_RULES = ("low_confidence", "random", "maskgit_plus", "topk_margin", "entropy", "ancestral", "threshold",
               "factor")
"""the rules `textdiff bench` runs unless --rules says otherwise."""


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="masked-diffusion checkpoint SFT'd on a task (e.g. runs/masked_arithmetic_gen32/final)")
    parser.add_argument("--ar", help="an AR checkpoint on the same task: adds greedy KV-cached AR rows")
    parser.add_argument("--task", help="arithmetic | countdown | sudoku (default: the run's data.task)")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"))
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--rules", default=",".join(BENCH_RULES), help="comma-separated unmasking rules")
    parser.add_argument("--caches", default="none,prefix,dual", help="comma-separated KV-cache modes")
    parser.add_argument("--threshold", type=float, default=0.9, help="confidence threshold of the threshold rule")
    parser.add_argument("--factor", type=float, default=1.0, help="factor of the factor rule")
    parser.add_argument("--gen-length", type=int, help="canvas length (default: the run's sample.gen_length)")
    parser.add_argument("--block-length", type=int, help="block length (default: the run's sample.block_length)")
    parser.add_argument("--steps", type=int, help="steps in total (default: gen length, one token per step)")
    parser.add_argument("--batch-size", type=int, default=1, help="problems decoded together (left-padded)")
    parser.add_argument("--no-warmup", action="store_true", help="time the first decode of every setting too")
    parser.add_argument("--seed", type=int, default=0, help="which problems of the split")
    parser.add_argument("--out", help="output stem: OUT.json, OUT.md, OUT.png (default: CKPT/bench)")


def bench_cli(args: argparse.Namespace) -> int:
    """`textdiff bench`: the rule x cache grid (and the AR twin) on a task split, round-robin; JSON, md, PNG."""
    import torch

    from textdiff.data.tasks import get_task
    from textdiff.evaluation.bench import Setting, markdown_table, run_benchmark, settings_grid, write_report
    from textdiff.modeling.checkpoint_io import check_checkpoint, load_model, load_tokenizer

    config = check_checkpoint(args.checkpoint)
    if config.get("attention_mode") == "causal":
        raise ValueError(f"{args.checkpoint} is a causal (AR) checkpoint: give the masked model, the AR one as --ar")
    run = run_config(args.checkpoint)
    data, sample = run.get("data") or {}, run.get("sample") or {}
    task_name = args.task or data.get("task")
    if not task_name:
        raise ValueError("textdiff bench needs a task: --task (the checkpoint's run names none)")
    task_kwargs = dict(data.get("task_kwargs") or {}) if task_name == data.get("task") else {}
    task = get_task(task_name, **task_kwargs)
    if args.problems < 1 or args.batch_size < 1:
        raise ValueError(f"--problems and --batch-size must be >= 1, got {args.problems} and {args.batch_size}")
    gen_length = args.gen_length or int(sample.get("gen_length", 32))
    block_length = args.block_length or int(sample.get("block_length", gen_length))
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    caches = [c.strip() for c in args.caches.split(",") if c.strip()]
    settings = settings_grid(rules, caches, gen_length=gen_length, block_length=block_length, steps=args.steps,
                             rule_options={"threshold": {"threshold": args.threshold}, "factor": {"factor": args.factor}})
    models = {"masked": (load_model(args.checkpoint), load_tokenizer(args.checkpoint))}
    if args.ar:
        ar_config = check_checkpoint(args.ar, what="--ar checkpoint")
        if ar_config.get("attention_mode") != "causal":
            raise ValueError(f"--ar {args.ar} is not a causal (AR) checkpoint")
        models["ar"] = (load_model(args.ar, what="--ar checkpoint"), load_tokenizer(args.ar, what="--ar checkpoint"))
        settings += [Setting(name=f"AR greedy + KV cache ({gen_length} tokens)", model="ar", decoder="ar"),
                     Setting(name="AR greedy + KV cache (stop at EOS)", model="ar", decoder="ar", stop_at_eos=True)]
    torch.manual_seed(args.seed)
    problems = task.generate(args.problems, args.split, args.seed)
    report = run_benchmark(settings, task, problems, models, gen_length=gen_length, block_length=block_length,
                           batch_size=args.batch_size, warmup=not args.no_warmup)
    report.update(command="textdiff bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
                  checkpoint=args.checkpoint, ar_checkpoint=args.ar, task_kwargs=task_kwargs, split=args.split)
    paths = write_report(report, args.out or Path(args.checkpoint) / "bench")
    print(markdown_table(report))
    print("\n" + "  ".join(f"{kind}: {path}" for kind, path in paths.items()))
    return 0
