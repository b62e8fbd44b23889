"""The quickstart model's samples under several decoding settings, scored as `textdiff eval` scores them:
generative perplexity under SmolLM2-135M, distinct-n, self-BLEU, repetition and the fraction that `ast.parse`
after trimming to the last complete line, beside the same figures for held-out stdlib text that starts with the
same prompts. The first setting is the quickstart's previous one (greedy low-confidence).

    textdiff train recipes/masked/stdlib_quickstart.yaml
    python eval/quickstart_samples.py       # writes eval/results/quickstart_samples.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from textdiff.evaluation.metrics import load_judge
from textdiff.evaluation.run import evaluate_checkpoint

RESULTS = Path(__file__).parent / "results"

SETTINGS = [
    {"name": "previous: low_confidence, greedy", "sampler": "low_confidence", "temperature": 0.0},
    {"name": "ancestral (MDLM), T=1", "sampler": "ancestral", "temperature": 1.0},
    {"name": "low_confidence, T=1, top-k 50", "sampler": "low_confidence", "temperature": 1.0, "top_k": 50},
    {"name": "low_confidence, T=0.8, top-p 0.9, rep. penalty 1.3", "sampler": "low_confidence",
     "temperature": 0.8, "top_p": 0.9, "repetition_penalty": 1.3},
    {"name": "low_confidence, greedy, rep. penalty 1.3", "sampler": "low_confidence", "temperature": 0.0,
     "repetition_penalty": 1.3},
    {"name": "low_confidence, T=0.8, top-p 0.9, rep. penalty 1.3, blocks of 8", "sampler": "low_confidence",
     "temperature": 0.8, "top_p": 0.9, "repetition_penalty": 1.3, "block_length": 8},
    {"name": "low_confidence, T=0.6, top-p 0.9, rep. penalty 1.2, blocks of 8", "sampler": "low_confidence",
     "temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.2, "block_length": 8},
    {"name": "entropy (Dream), T=0.8, top-p 0.9, rep. penalty 1.3", "sampler": "entropy", "temperature": 0.8,
     "top_p": 0.9, "repetition_penalty": 1.3},
]
FIGURES = ("generative_perplexity", "distinct_1", "distinct_2", "self_bleu", "repetition_rate_4", "ast_parse")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="runs/quickstart/final")
    p.add_argument("--prompts", default="def ,import ,class ", help="comma-separated")
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--out", default=str(RESULTS / "quickstart_samples"))
    args = p.parse_args()
    judge = load_judge("smollm2")  # loaded once for every setting
    prompts = args.prompts.split(",")
    common = {"corpus": "stdlib", "prompts": prompts, "num_samples": args.num_samples, "gen_length": 64,
              "steps": 64, "block_length": 32, "judge": judge, "seed": 0}
    rows = []
    for i, setting in enumerate(SETTINGS):
        options = {**common, **{k: v for k, v in setting.items() if k != "name"}}
        metrics = ("likelihood",) if i == 0 else ()
        report = evaluate_checkpoint(args.checkpoint, metrics=(*metrics, "generative_perplexity", "distinct_n",
                                                              "self_bleu", "repetition_rate", "ast_parse"),
                                     **options)
        report["samples"]["judge"] = "smollm2"
        rows.append({"setting": setting, "report": report})
    out = Path(args.out)
    result = {"command": "python " + " ".join(sys.argv), "checkpoint": args.checkpoint,
              "likelihood": rows[0]["report"]["likelihood"], "reference": rows[0]["report"]["samples"]["reference"],
              "settings": [{"name": r["setting"]["name"], "decoding": r["report"]["samples"]["decoding"],
                            "metrics": r["report"]["samples"]["metrics"], "texts": r["report"]["samples"]["texts"]}
                           for r in rows]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = ["| setting | " + " | ".join(FIGURES) + " |", "|---" * (len(FIGURES) + 1) + "|"]
    for name, m in [(s["name"], s["metrics"]) for s in result["settings"]] + \
            [("held-out stdlib text, same prompts", result["reference"]["metrics"])]:
        lines.append(f"| {name} | " + " | ".join("-" if m.get(f) is None else f"{m[f]:.3g}" for f in FIGURES) + " |")
    table = "\n".join(lines)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
