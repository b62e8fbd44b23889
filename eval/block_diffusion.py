"""Block diffusion (BD3-LM) vs the bidirectional masked model on the long-answer task digit_shift, same budget:
exact-answer accuracy and tokens/s per unmasking rule x KV-cache mode, and how often a cache changes the tokens.

    textdiff train recipes/bd3/digit_shift_sft.yaml
    textdiff train recipes/masked/digit_shift_sft.yaml
    python eval/block_diffusion.py      # writes eval/results/block_diffusion.{json,png,md}

Both models are the same trunk (hidden 64, 2 layers), tokenizer, problems, batch, lr and steps; they differ in the
objective and attention (bd3: each 32-token block noised while reading the clean blocks before it, block-causal;
masked: the whole answer noised, bidirectional). Every setting decodes the same held-out test problems with
`textdiff.generate` (generation length 256, blocks of 32, stopping after the block that holds EOS), timed
round-robin per batch by `textdiff.evaluation.bench.run_benchmark`, at batch 1 and batch 16 (left-padded).
"Same tokens as no cache" is the fraction of problems whose generated token ids under a cache equal that model's
cache-free ids under the same rule: exact caches give 100% (block-causal bd3), approximate ones may not
(bidirectional masked: the cache freezes keys that later steps would change).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from textdiff.config import load_recipe
from textdiff.data.tasks import get_task
from textdiff.evaluation.bench import Setting, decode_masked, markdown_table, run_benchmark, write_report
from textdiff.modeling.checkpoint_io import load_model, load_tokenizer

RESULTS = Path(__file__).parent / "results"
RULES = {"low_confidence": {}, "threshold": {"threshold": 0.9}}
CACHES = ("none", "prefix", "dual")


def settings(models: list[str]) -> list[Setting]:
    rows = []
    for model in models:
        for rule, options in RULES.items():
            label = rule + "".join(f" {v:g}" for v in options.values())
            for cache in CACHES:
                name = f"{model}: {label}" + ("" if cache == "none" else f" + {cache}")
                rows.append(Setting(name=name, sampler=rule, cache=cache, options=dict(options), stop_at_eos=True,
                                    model=model))
    return rows


class Recorder:
    """`decode_masked`, keeping every setting's generated ids per prompt (to compare cached with cache-free)."""

    def __init__(self) -> None:
        self.ids: dict[str, dict[tuple, list[int]]] = {}

    def __call__(self, setting, model, tokenizer, rows, *, gen_length, block_length):
        generated, nfe = decode_masked(setting, model, tokenizer, rows, gen_length=gen_length,
                                       block_length=block_length)
        record = self.ids.setdefault(setting.name, {})
        for row, ids in zip(rows, generated):
            record[tuple(row)] = ids
        return generated, nfe


def cache_exactness(report: dict, recorder: Recorder, rows: list[Setting]) -> None:
    """Add `same_tokens_as_no_cache` (fraction of problems) to every result row, against the cache-free row of the
    same model and rule."""
    by_name = {s.name: s for s in rows}
    for result in report["results"]:
        s = by_name[result["name"]]
        ref = next(r.name for r in rows if r.model == s.model and r.sampler == s.sampler and r.cache == "none")
        got, want = recorder.ids[s.name], recorder.ids[ref]
        result["same_tokens_as_no_cache"] = sum(got[k] == want[k] for k in want) / len(want)
        result["model"], result["rule"], result["cache"] = s.model, s.sampler, s.cache


def table(reports: list[dict]) -> str:
    lines = ["| batch | model | rule | cache | accuracy | same tokens as no cache | NFE / problem | tokens/s | "
             "speed vs model's low_confidence, no cache |", "|---|---|---|---|---|---|---|---|---|"]
    for report in reports:
        base = {r["model"]: r["tokens_per_s"] for r in report["results"]
                if r["rule"] == "low_confidence" and r["cache"] == "none"}
        for r in report["results"]:
            rule = r["rule"] + "".join(f" {v:g}" for v in r["setting"]["options"].values())
            lines.append(f"| {report['batch_size']} | {r['model']} | {rule} | {r['cache']} | "
                         f"{100 * r['accuracy']:.0f}% | {100 * r['same_tokens_as_no_cache']:.0f}% | "
                         f"{r['nfe_per_problem']:.1f} | {r['tokens_per_s']:.0f} | "
                         f"{r['tokens_per_s'] / base[r['model']]:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bd3", default="runs/bd3_digit_shift/final")
    parser.add_argument("--masked", default="runs/masked_digit_shift/final")
    parser.add_argument("--recipe", default="recipes/bd3/digit_shift_sft.yaml", help="the task and its kwargs")
    parser.add_argument("--problems", type=int, default=50)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "block_diffusion"))
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = load_recipe(args.recipe).data
    task = get_task(data.task, **data.task_kwargs)
    problems = task.generate(args.problems, "test", args.seed)
    models = {"bd3": (load_model(args.bd3), load_tokenizer(args.bd3)),
              "masked": (load_model(args.masked), load_tokenizer(args.masked))}
    rows = settings(list(models))
    reports = []
    for batch_size in args.batch_sizes:
        recorder = Recorder()
        report = run_benchmark(rows, task, problems, models, gen_length=args.gen_length,
                               block_length=args.block_length, batch_size=batch_size, decoders={"generate": recorder})
        cache_exactness(report, recorder, rows)
        reports.append(report)
        print(f"batch {batch_size}:\n{markdown_table(report)}", file=sys.stderr, flush=True)
    out = Path(args.out)
    command = "python eval/block_diffusion.py " + " ".join(sys.argv[1:])
    summary = {"command": command.strip(), "bd3_checkpoint": args.bd3, "masked_checkpoint": args.masked,
               "task": task.name, "task_kwargs": data.task_kwargs, "split": "test", "problems": len(problems),
               "gen_length": args.gen_length, "block_length": args.block_length, "threads": torch.get_num_threads(),
               "reports": reports}
    # bench's writer: per batch size its JSON / md / Pareto PNG; then the combined JSON and table
    for report in reports:
        report["command"] = summary["command"]
        write_report(report, out.with_name(f"{out.name}_batch{report['batch_size']}"))
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    md = table(reports)
    out.with_suffix(".md").write_text(f"`{summary['command']}`\n\n{md}\n")
    plot(reports, out.with_suffix(".png"))
    print(md)


def plot(reports: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reports), figsize=(6.5 * len(reports), 5), squeeze=False)
    for ax, report in zip(axes[0], reports):
        for r in report["results"]:
            color = "tab:green" if r["model"] == "bd3" else "tab:blue"
            marker = {"none": "o", "prefix": "s", "dual": "D"}[r["cache"]]
            ax.scatter(r["tokens_per_s"], 100 * r["accuracy"], c=color, marker=marker, s=50, alpha=0.85)
            ax.annotate(r["name"], (r["tokens_per_s"], 100 * r["accuracy"]), fontsize=6.5, xytext=(4, 2),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(f"tokens / s ({report['gen_length']}-token canvas, batch {report['batch_size']}, CPU)")
        ax.set_ylabel("digit_shift exact-answer accuracy (%)")
        ax.set_title(f"bd3 (green) vs masked (blue), {report['problems']} problems, block {report['block_length']}\n"
                     "o none, s prefix, D dual cache", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
