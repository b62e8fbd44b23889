"""Masked diffusion vs AR at equal size, data and tokens on the CPython standard library: validation ELBO-PPL
bound of the masked model against the exact PPL of the AR model, with both loss curves.

    textdiff train recipes/masked/stdlib_pretrain.yaml
    textdiff train recipes/ar/stdlib_pretrain.yaml
    python eval/stdlib_likelihood.py        # writes eval/results/stdlib_likelihood.{json,png}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def curves(results: dict) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    train = [(h["step"], h["loss"]) for h in results["log_history"] if "loss" in h]
    valid = [(h["step"], h["eval_loss"]) for h in results["log_history"] if "eval_loss" in h]
    return train, valid


def summary(results: dict) -> dict:
    cfg = results["config"]
    ev = results["final_eval"]
    tokens = cfg["trainer"]["max_steps"] * cfg["trainer"]["per_device_train_batch_size"] * cfg["data"]["seq_len"]
    return {
        "recipe": results["recipe"],
        "family": results.get("family") or cfg["objective"]["name"],  # results before families: objective.name
        "parameters": results["model_parameters"],
        "train_tokens": tokens,
        "train_runtime_s": results["train_runtime_s"],
        "valid_nats_per_token": ev["eval_loss"],
        "valid_bits_per_token": ev["eval_bits_per_token"],
        "valid_ppl": ev["eval_ppl"],
        "valid_tokens": ev["eval_tokens"],
        "elbo_mc_samples_per_sequence": ev["eval_mc_samples"],
        "samples": results.get("samples", []),
    }


def plot(masked: dict, ar: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for results, label, color in ((masked, "masked diffusion (NELBO bound)", "tab:blue"), (ar, "AR (exact NLL)", "tab:orange")):
        train, valid = curves(results)
        ax.plot(*zip(*train), color=color, alpha=0.45, lw=1, label=f"{label}, train")
        if valid:
            ax.plot(*zip(*valid), "o-", color=color, lw=2, label=f"{label}, valid")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("nats / token")
    ax.set_ylim(top=min(8.5, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    ax.legend()
    m, a = summary(masked), summary(ar)
    ax.set_title(
        f"stdlib, {m['parameters'] / 1e6:.1f}M params, {m['train_tokens'] / 1e6:.1f}M tokens: "
        f"PPL masked <= {m['valid_ppl']:.2f}, AR {a['valid_ppl']:.2f}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--masked", default="runs/masked_stdlib/results.json")
    p.add_argument("--ar", default="runs/ar_stdlib/results.json")
    p.add_argument("--out", default=str(RESULTS / "stdlib_likelihood"))
    args = p.parse_args()
    masked, ar = (json.loads(Path(f).read_text()) for f in (args.masked, args.ar))
    if masked["data"].get("content_hash") != ar["data"].get("content_hash"):
        sys.exit("the two runs were trained on different corpora (content_hash differs)")
    m, a = summary(masked), summary(ar)
    report = {
        "commands": [
            "textdiff train recipes/masked/stdlib_pretrain.yaml",
            "textdiff train recipes/ar/stdlib_pretrain.yaml",
            "python " + " ".join(sys.argv),
        ],
        "corpus": masked["data"],
        "masked": m,
        "ar": a,
        "ppl_ratio_masked_bound_over_ar": m["valid_ppl"] / a["valid_ppl"],
        "note": (
            "The masked figure is an upper bound (continuous-time NELBO, Monte Carlo over t with a fixed seed); the AR "
            "figure is exact and scores every token but the first of each 128-token block. MDLM reports its bound "
            "within about 1.3x of AR perplexity at 1B-token scale."
        ),
        "train_curves": {"masked": curves(masked), "ar": curves(ar)},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(masked, ar, out.with_suffix(".png"))
    print(f"masked: PPL <= {m['valid_ppl']:.3f} ({m['valid_bits_per_token']:.3f} bits/token)")
    print(f"AR:     PPL    {a['valid_ppl']:.3f} ({a['valid_bits_per_token']:.3f} bits/token)")
    print(f"ratio masked bound / AR: {report['ppl_ratio_masked_bound_over_ar']:.3f}")


if __name__ == "__main__":
    main()
