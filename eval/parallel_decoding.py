"""Parallel decoding benchmark: task accuracy vs NFE vs tokens/s for every unmasking rule x KV-cache mode of
`textdiff.generate`, side by side with greedy KV-cached AR decoding of the AR twin, in one run.

    textdiff train recipes/masked/arithmetic_sft_gen256.yaml
    textdiff train recipes/ar/arithmetic_sft.yaml
    python eval/parallel_decoding.py          # writes eval/results/parallel_decoding.{json,png,md}

Every setting decodes the same held-out test problems one at a time (batch 1, as Fast-dLLM measures), at
generation length 256 with blocks of 32. tokens/s counts the 256-token canvas (Fast-dLLM's convention); the AR
rows decode the same canvas length, once without stopping at EOS (equal work) and once stopping at EOS.
Settings are timed round-robin per problem so machine-load drift hits all of them alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from textdiff.config import load_recipe
from textdiff.data import SFTCollator
from textdiff.data.tasks import get_task
from textdiff.samplers import generate, generate_autoregressive
from textdiff.pipelines.text import decode_completion

RESULTS = Path(__file__).parent / "results"


@torch.no_grad()
def llada_reference_generate(model, prompt, *, gen_length, steps, block_length, mask_id):
    """LLaDA's `generate()` transcribed plainly (greedy, low-confidence remasking): the baseline the library loop
    must match in speed. Full forward every step, softmax confidence, top-k commit per block step."""
    x = torch.full((1, prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    for b in range(num_blocks):
        start = prompt.shape[1] + b * block_length
        end = start + block_length
        n = int((x[:, start:end] == mask_id).sum())
        counts = [n // per_block + (1 if i < n % per_block else 0) for i in range(per_block)]
        for k in counts:
            mask_index = x == mask_id
            logits = model(x).logits
            x0 = logits.argmax(-1)
            p = F.softmax(logits, dim=-1).gather(-1, x0[..., None]).squeeze(-1)
            p[:, end:] = -torch.inf
            confidence = torch.where(mask_index, p, torch.full_like(p, -torch.inf))
            x0 = torch.where(mask_index, x0, x)
            if k:
                idx = torch.topk(confidence[0], k).indices
                x[0, idx] = x0[0, idx]
    return x


def settings(gen_length: int, block_length: int) -> list[dict]:
    full = dict(steps=gen_length, block_length=block_length)
    rows = [
        dict(name="reference loop (LLaDA generate, plain)", kind="reference", **full),
        dict(name="low_confidence", sampler="low_confidence", cache="none", **full),
        dict(name="low_confidence + prefix", sampler="low_confidence", cache="prefix", **full),
        dict(name="low_confidence + dual", sampler="low_confidence", cache="dual", **full),
        dict(name="low_confidence, 4 tok/step", sampler="low_confidence", cache="none", steps=gen_length // 4,
             block_length=block_length),
        dict(name="random", sampler="random", cache="none", **full),
        dict(name="maskgit_plus", sampler="maskgit_plus", cache="none", **full),
        dict(name="topk_margin", sampler="topk_margin", cache="none", **full),
        dict(name="entropy", sampler="entropy", cache="none", **full),
        dict(name="ancestral (MDLM)", sampler="ancestral", cache="none", **full),
    ]
    # every other rule under the caches too: the loop's cache modes are rule-agnostic
    for rule, label in (("random", "random"), ("maskgit_plus", "maskgit_plus"), ("topk_margin", "topk_margin"),
                        ("entropy", "entropy"), ("ancestral", "ancestral (MDLM)")):
        for cache in ("prefix", "dual"):
            rows.append(dict(name=f"{label} + {cache}", sampler=rule, cache=cache, **full))
    for cache in ("none", "prefix", "dual"):
        suffix = "" if cache == "none" else f" + {cache}"
        rows.append(dict(name=f"threshold 0.9{suffix}", sampler="threshold", options={"threshold": 0.9},
                         cache=cache, **full))
        rows.append(dict(name=f"factor 1.0{suffix}", sampler="factor", options={"factor": 1.0}, cache=cache, **full))
    rows.append(dict(name="threshold 0.9 + dual + stop at EOS", sampler="threshold", options={"threshold": 0.9},
                     cache="dual", stop_at_eos=True, **full))
    rows.append(dict(name=f"AR greedy + KV cache ({gen_length} tokens)", kind="ar", stop=False))
    rows.append(dict(name="AR greedy + KV cache (stop at EOS)", kind="ar", stop=True))
    return rows


def decode_one(setting: dict, masked, ar, prompt_ids: torch.Tensor, gen_length: int, eos_id: int):
    kind = setting.get("kind", "diffusion")
    if kind == "reference":
        seq = llada_reference_generate(masked, prompt_ids, gen_length=gen_length, steps=setting["steps"],
                                       block_length=setting["block_length"], mask_id=masked.config.mask_token_id)
        return seq, setting["steps"]
    if kind == "ar":
        out = generate_autoregressive(ar, prompt_ids, gen_length=gen_length,
                                      eos_token_id=eos_id if setting["stop"] else None)
        return out.sequences, out.nfe
    out = generate(masked, prompt_ids, gen_length=gen_length, steps=setting["steps"],
                   block_length=setting["block_length"], sampler=setting["sampler"], cache=setting["cache"],
                   stop_at_eos=setting.get("stop_at_eos", False), eos_token_id=eos_id, **setting.get("options", {}))
    return out.sequences, out.nfe


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    masked = AutoModel.from_pretrained(args.masked).eval()
    ar = AutoModel.from_pretrained(args.ar).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.masked)
    ar_tokenizer = AutoTokenizer.from_pretrained(args.ar)  # each model reads and writes with its own tokenizer
    data = load_recipe(args.recipe).data  # the task the masked model was SFT'd on
    task = get_task(data.task, **data.task_kwargs)
    problems = task.generate(args.problems, "test", args.seed)
    encoder = SFTCollator(tokenizer, max_length=10**9)
    ar_encoder = SFTCollator(ar_tokenizer, max_length=10**9)
    rows = settings(args.gen_length, args.block_length)
    if args.only:
        rows = [r for r in rows if any(key in r["name"] for key in args.only.split(","))]
    stats = {r["name"]: {"time": 0.0, "nfe": 0, "correct": 0, "agree": 0, "examples": []} for r in rows}
    for i, problem in enumerate(problems):
        texts = {}
        for setting in rows:
            is_ar = setting.get("kind") == "ar"
            tok, enc = (ar_tokenizer, ar_encoder) if is_ar else (tokenizer, encoder)
            prompt_ids = torch.tensor([enc.encode_prompt(problem.prompt)])
            start = time.perf_counter()
            seq, nfe = decode_one(setting, masked, ar, prompt_ids, args.gen_length, tok.eos_token_id)
            elapsed = time.perf_counter() - start
            text = decode_completion(tok, seq[0, prompt_ids.shape[1]:].tolist(),
                                     None if is_ar else masked.config.mask_token_id)
            s = stats[setting["name"]]
            s["time"] += elapsed
            s["nfe"] += nfe
            s["correct"] += task.verify(problem, text)
            texts[setting["name"]] = text
            if len(s["examples"]) < 3:
                s["examples"].append({"prompt": problem.prompt, "answer": problem.answer, "completion": text})
        # the same answer as exact low-confidence decoding: how much a cache / parallel rule changes the output
        for name, text in texts.items():
            stats[name]["agree"] += text == texts.get("low_confidence")
        print(f"problem {i + 1}/{len(problems)}", file=sys.stderr, flush=True)

    n = len(problems)
    base = stats["low_confidence"]["time"] if "low_confidence" in stats else None
    results = []
    for setting in rows:
        s = stats[setting["name"]]
        row = {
            "name": setting["name"],
            "setting": {k: v for k, v in setting.items() if k != "name"},
            "accuracy": s["correct"] / n,
            "agreement_with_low_confidence": s["agree"] / n if base else None,
            "nfe_per_problem": s["nfe"] / n,
            "seconds_per_problem": s["time"] / n,
            "tokens_per_s": args.gen_length * n / s["time"],
            "examples": s["examples"],
        }
        if base:
            row["speedup_vs_low_confidence"] = base / s["time"]
        results.append(row)
    by_name = {r["name"]: r for r in results}
    report = {
        "command": "python " + " ".join(sys.argv),
        "masked_checkpoint": args.masked,
        "ar_checkpoint": args.ar,
        "recipe": args.recipe,
        "task": data.task,
        "task_kwargs": dict(data.task_kwargs),
        "problems": n,
        "split": "test",
        "gen_length": args.gen_length,
        "block_length": args.block_length,
        "batch_size": 1,
        "threads": torch.get_num_threads(),
        "results": results,
    }
    if {"low_confidence", "threshold 0.9 + dual", "reference loop (LLaDA generate, plain)"} <= by_name.keys():
        base_row, fast = by_name["low_confidence"], by_name["threshold 0.9 + dual"]
        ref = by_name["reference loop (LLaDA generate, plain)"]
        report["targets"] = {
            "baseline_vs_reference_speed": base_row["tokens_per_s"] / ref["tokens_per_s"],
            "baseline_at_least_as_fast_as_reference": base_row["tokens_per_s"] >= ref["tokens_per_s"],
            "threshold_dual_speedup": fast["tokens_per_s"] / base_row["tokens_per_s"],
            "threshold_dual_accuracy_delta_points": 100 * (fast["accuracy"] - base_row["accuracy"]),
            "speedup_at_least_8x_within_1_point": fast["tokens_per_s"] >= 8 * base_row["tokens_per_s"]
            and abs(fast["accuracy"] - base_row["accuracy"]) <= 0.01,
        }
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for row in report["results"]:
        kind = row["setting"].get("kind", "diffusion")
        color = {"reference": "black", "ar": "tab:red"}.get(kind, "tab:blue")
        cache = row["setting"].get("cache", "none")
        marker = {"none": "o", "prefix": "s", "dual": "D"}.get(cache, "^")
        ax.scatter(row["tokens_per_s"], 100 * row["accuracy"], c=color, marker=marker, s=45, alpha=0.85)
        ax.annotate(row["name"], (row["tokens_per_s"], 100 * row["accuracy"]), fontsize=6.5,
                    xytext=(4, 2), textcoords="offset points")
    # Pareto front: best accuracy at or above each speed
    pts = sorted(((r["tokens_per_s"], 100 * r["accuracy"]) for r in report["results"]), reverse=True)
    front, best = [], -1.0
    for speed, acc in pts:
        if acc > best:
            front.append((speed, acc))
            best = acc
    ax.plot(*zip(*sorted(front)), "--", color="gray", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel(f"tokens / s ({report['gen_length']}-token canvas, batch 1, CPU)")
    ax.set_ylabel(f"{report['task']} test accuracy (%)")
    ax.set_title(f"parallel decoding: gen length {report['gen_length']}, block {report['block_length']}, "
                 f"{report['problems']} problems (o none, s prefix, D dual cache; red AR)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def markdown_table(report: dict) -> str:
    lines = [
        "| setting | accuracy | same answer as low_confidence | NFE / problem | s / problem | tokens/s | speed vs low_confidence |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        speed, agree = r.get("speedup_vs_low_confidence"), r.get("agreement_with_low_confidence")
        lines.append(f"| {r['name']} | {100 * r['accuracy']:.1f}% | {'' if agree is None else f'{100 * agree:.0f}%'} | "
                     f"{r['nfe_per_problem']:.1f} | {r['seconds_per_problem']:.3f} | {r['tokens_per_s']:.0f} | "
                     f"{'' if speed is None else f'{speed:.2f}x'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="recipes/masked/arithmetic_sft_gen256.yaml", help="recipe of --masked")
    p.add_argument("--masked", default="runs/masked_arithmetic_gen256/final")
    p.add_argument("--ar", default="runs/ar_arithmetic/final")
    p.add_argument("--problems", type=int, default=100)
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default="", help="comma-separated substrings of setting names to run")
    p.add_argument("--out", default=str(RESULTS / "parallel_decoding"))
    args = p.parse_args()
    report = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    table = markdown_table(report)
    out.with_suffix(".md").write_text(table + "\n")
    plot(report, out.with_suffix(".png"))
    print(table)
    if "targets" in report:
        print(json.dumps(report["targets"], indent=2))


if __name__ == "__main__":
    main()
