"""Coupled-GRPO vs d1 on countdown, from the same SFT checkpoint with the same budget: reward and held-out accuracy.

The chain (each recipe opens with its command):
    textdiff train recipes/masked/countdown_sft.yaml          # SFT -> runs/masked_countdown/final
    python eval/rl_countdown.py                               # both RL recipes from that checkpoint

Each method runs its recipe (recipes/rl/countdown_coupled_grpo.yaml, recipes/rl/countdown_d1.yaml) with identical
overrides (steps, batch, learning rate, rollouts, seed); only the log-likelihood estimator differs. Held-out test
accuracy is greedy decoding of the same test problems (all 266 of the split by default; split by problem key,
never seen in SFT or RL) before RL and every --eval-every steps. Writes eval/results/rl_countdown.{json,png} with
the exact command.

Also reports the sampled accuracy (8 temperature-1 rollouts per held-out problem, what RL optimises) and pass@8
of the SFT checkpoint and each final policy. Slow: about 2 s per RL step (one thread, 64 rollouts of 16 tokens).

Other modes: --combine merges finished runs (one per method and seed, run in parallel) into one result with the
mean gain over seeds; --evaluate scores finished checkpoints on the held-out problems (with --all-orderings: every
problem with its numbers in every order, which removes the luck of how a problem's numbers happen to be listed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from textdiff.config import load_recipe
from textdiff.rl.run import rl_from_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"coupled": "recipes/rl/countdown_coupled_grpo.yaml", "d1": "recipes/rl/countdown_d1.yaml"}


def _smooth(values: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"coupled": "tab:blue", "d1": "tab:orange"}
    for name, run in results["methods"].items():
        steps = [r["step"] for r in run["reward_curve"]]
        rewards = [r["reward"] for r in run["reward_curve"]]
        left.plot(steps, rewards, color=colors.get(name), alpha=0.25)
        left.plot(steps, _smooth(rewards, 5), color=colors.get(name), label=f"{name} (5-log moving mean)")
        acc = run["accuracy_curve"]
        seeds = run.get("other_seeds", [])
        label = f"{name} (seed {run.get('seed', 0)})" if seeds else name
        right.plot([a["step"] for a in acc], [100 * a["accuracy"] for a in acc], "o-", color=colors.get(name),
                   label=label)
        for other in seeds:
            curve = other["accuracy_curve"]
            right.plot([a["step"] for a in curve], [100 * a["accuracy"] for a in curve], "--", color=colors.get(name),
                       alpha=0.6, label=f"{name} (seed {other['seed']})")
    sft = 100 * results["sft_accuracy"]
    right.axhline(sft, color="gray", ls="--", label=f"SFT checkpoint ({sft:.1f}%)")
    right.axhline(sft + 10, color="gray", ls=":", label="target: SFT + 10 points")
    left.set(xlabel="RL step", ylabel="mean rollout reward (the recipes' rl.reward_funcs)", title="training reward")
    right.set(xlabel="RL step", ylabel="held-out test accuracy (%)",
              title=f"greedy accuracy on {results['test_problems']} test problems")
    left.legend()
    right.legend()
    fig.suptitle("countdown (3 numbers in 1..20, + and -): coupled-GRPO vs d1 from one SFT checkpoint")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _sampled_success(model, tokenizer, task, problems, samples: int, seed: int, rl, chunk: int = 32) -> list[float]:
    """Share of `samples` temperature-1 rollouts (the RL sampler of the recipe's `rl` section) that solve each
    problem; `chunk` problems (each repeated `samples` times, left-padded) per generate call."""
    from textdiff.evaluation import complete_prompts

    completions = complete_prompts(
        model, tokenizer, [p.prompt for p in problems], samples_per_prompt=samples, batch_size=chunk * samples,
        gen_length=rl.gen_length, steps=rl.diffusion_steps, block_length=rl.block_length or rl.gen_length,
        temperature=rl.temperature, generator=torch.Generator().manual_seed(seed), sampler=rl.sampler,
        **rl.sampler_options)
    return [sum(task.verify(p, c) for c in group) / samples for p, group in zip(problems, completions)]


def standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy over n problems (problems that share numbers are correlated, so
    this is a lower bound)."""
    return (accuracy * (1 - accuracy) / n) ** 0.5


def evaluate_checkpoints(args) -> int:
    """Greedy held-out accuracy (with its standard error), sampled accuracy and pass@8 of finished checkpoints on
    the benchmark's held-out problems: compares runs on one larger problem set than their training-time curves."""
    from transformers import AutoModel, AutoTokenizer

    from textdiff.data.tasks import get_task
    from textdiff.evaluation import evaluate_task

    torch.set_num_threads(args.threads)
    recipe = load_recipe(ROOT / RECIPES["coupled"])
    task = get_task(recipe.data.task, **recipe.data.task_kwargs)
    problems = task.generate(args.problems, "test", recipe.eval.seed)
    if args.all_orderings:  # each problem with its numbers in every distinct order
        problems = [variant for p in problems for variant in task.orderings(p)]
    s = recipe.sample
    out = {"command": "python eval/rl_countdown.py " + " ".join(sys.argv[1:]), "test_problems": args.problems,
           "all_orderings": args.all_orderings, "prompts": len(problems), "checkpoints": {}}
    for path in args.evaluate:
        if not Path(path, "config.json").is_file():
            raise SystemExit(f"{path} is not a checkpoint directory (no config.json)")
        model, tokenizer = AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
        greedy = evaluate_task(model, tokenizer, task, problems, gen_length=s.gen_length, steps=s.steps,
                               block_length=s.block_length, batch_size=256)["accuracy"]
        rates = _sampled_success(model, tokenizer, task, problems, 8, seed=123, rl=recipe.rl)
        score = out["checkpoints"][path] = {
            "greedy_accuracy": greedy, "greedy_se": standard_error(greedy, len(problems)),
            "sampled_accuracy": sum(rates) / len(rates), "pass@8": sum(r > 0 for r in rates) / len(rates)}
        print(f"{path}: greedy {100 * greedy:.1f}% (se {100 * score['greedy_se']:.1f}), sampled "
              f"{100 * score['sampled_accuracy']:.1f}%, pass@8 {100 * score['pass@8']:.1f}%", flush=True)
    _write_json(out, args.out)
    return 0


def _write_json(result: dict, out: str) -> None:
    path = Path(out).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


def seen_prompt_probe(args) -> int:
    """Diagnostic: RL on only `--probe-prompts` training prompts (repeated), then the sampled success rate on those
    same prompts before and after. Separates "the update does not improve the policy" from "it does not
    generalise to held-out problems within the budget"."""
    from datasets import Dataset
    from transformers import AutoModel, AutoTokenizer

    from textdiff.data.tasks import get_task
    from textdiff.rl.rewards import get_reward
    from textdiff.rl.run import grpo_config
    from textdiff.rl.trainer import CoupledGRPOTrainer

    out = {"command": "python eval/rl_countdown.py " + " ".join(sys.argv[1:]), "sft_checkpoint": args.sft,
           "prompts": args.probe_prompts, "skipped": args.probe_skip, "steps": args.steps, "samples_per_prompt": 48, "methods": {}}
    for name in args.methods.split(","):
        recipe = load_recipe(ROOT / RECIPES[name], [f"run.output_dir={args.runs}/probe_{name}", f"rl.init_from={args.sft}",
                                                    f"trainer.max_steps={args.steps}", "trainer.report_to=[]",
                                                    "trainer.save_steps=null", "run.overwrite=true", *args.overrides]
                             + ([f"trainer.learning_rate={args.lr}"] if args.lr is not None else []))
        task = get_task(recipe.data.task, **recipe.data.task_kwargs)
        chosen = task.generate(args.probe_skip + args.probe_prompts, "train", args.seed)[args.probe_skip :]
        tokenizer = AutoTokenizer.from_pretrained(args.sft)
        model = AutoModel.from_pretrained(args.sft)
        before = _sampled_success(model, tokenizer, task, chosen, 48, seed=123, rl=recipe.rl)
        rows = [{"prompt": p.prompt, **p.meta} for p in chosen] * 200
        trainer = CoupledGRPOTrainer(model, [get_reward(n) for n in recipe.rl.reward_funcs or ["countdown"]],
                                     args=grpo_config(recipe), train_dataset=Dataset.from_list(rows),
                                     processing_class=tokenizer)
        trainer.train()
        after = _sampled_success(trainer.model, tokenizer, task, chosen, 48, seed=123, rl=recipe.rl)
        out["methods"][name] = {"prompts": [p.prompt for p in chosen], "success_before": before, "success_after": after,
                                "mean_before": sum(before) / len(before), "mean_after": sum(after) / len(after)}
        print(f"{name}: sampled success on the {len(chosen)} RL prompts {out['methods'][name]['mean_before']:.3f} -> "
              f"{out['methods'][name]['mean_after']:.3f}", flush=True)
    _write_json(out, args.out)
    return 0


def sampled_accuracy(results: dict, samples: int = 8, seed: int = 123) -> dict:
    """What RL optimises: temperature-1 rollouts (the RL sampler) on the same held-out problems, `samples` per
    problem, for the SFT checkpoint and each method's final policy. Mean success is the sampled accuracy; pass@k is
    the share of problems solved by at least one of the k samples (what sharpening cannot raise)."""
    from transformers import AutoModel, AutoTokenizer

    from textdiff.data.tasks import get_task

    checkpoints = {"sft": Path(results["sft_checkpoint"])}
    for name, run in results["methods"].items():
        out_dir = next(o.split("=", 1)[1] for o in run["overrides"] if o.startswith("run.output_dir="))
        checkpoints[name] = Path(out_dir) / "final"
    recipe = load_recipe(ROOT / RECIPES[next(iter(results["methods"]))])
    task = get_task(recipe.data.task, **recipe.data.task_kwargs)
    problems = task.generate(results["test_problems"], "test", recipe.eval.seed)
    scores = {}
    for name, path in checkpoints.items():
        if not path.is_dir():
            print(f"sampled accuracy: {path} is gone, skipping {name}")
            continue
        rates = _sampled_success(AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), task,
                                 problems, samples, seed, rl=recipe.rl)
        scores[name] = {"checkpoint": str(path), "mean_success": sum(rates) / len(rates),
                        f"pass@{samples}": sum(r > 0 for r in rates) / len(rates)}
        print(f"sampled accuracy ({samples} samples at temperature 1): {name} {scores[name]['mean_success']:.3f}, "
              f"pass@{samples} {scores[name][f'pass@{samples}']:.3f}", flush=True)
    return {"samples_per_problem": samples, "temperature": 1.0, "seed": seed, "scores": scores}


def _finish(results: dict, out: Path) -> None:
    befores = {m["accuracy_before"] for m in results["methods"].values()}
    assert len(befores) == 1, f"the methods did not start from the same accuracy: {befores}"
    results["sft_accuracy"] = befores.pop()
    results["sft_standard_error"] = standard_error(results["sft_accuracy"], results["test_problems"])
    results["sampled_accuracy"] = sampled_accuracy(results)
    results["target"] = "coupled-GRPO held-out accuracy >= SFT + 10 points"
    if "coupled" in results["methods"]:
        coupled = results["methods"]["coupled"]
        results["target_met"] = coupled.get("mean_gain_points", coupled["gain_points"]) >= 10
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


def _seed_of(run: dict) -> int:
    return int(next(o.split("=", 1)[1] for o in run["overrides"] if o.startswith("run.seed=")))


def combine(paths: list[str], out: Path) -> int:
    """One result file from finished runs (same SFT checkpoint, steps and problems required): one per method, run
    in parallel, and optionally more seeds of a method. The first run of a method is its main curve; later runs of
    the same method are kept under "other_seeds" and the gain is also reported as a mean over seeds."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    merged = dict(parts[0], methods={}, commands=[p["command"] for p in parts], combined_from=paths)
    for part in parts:
        for key in ("sft_checkpoint", "steps", "test_problems"):
            if part[key] != merged[key]:
                raise SystemExit(f"cannot combine: {key} differs ({part[key]!r} vs {merged[key]!r})")
        for name, run in part["methods"].items():
            run = dict(run, seed=_seed_of(run))
            if name not in merged["methods"]:
                merged["methods"][name] = run
                continue
            keep = ("seed", "accuracy_curve", "accuracy_before", "accuracy_after", "best_accuracy", "gain_points",
                    "seconds_per_step")
            merged["methods"][name].setdefault("other_seeds", []).append({k: run[k] for k in keep})
    for run in merged["methods"].values():
        gains = [run["gain_points"]] + [o["gain_points"] for o in run.get("other_seeds", [])]
        run["gain_points_per_seed"] = {str(s): g for s, g in zip(
            [run["seed"]] + [o["seed"] for o in run.get("other_seeds", [])], gains, strict=True)}
        run["mean_gain_points"] = sum(gains) / len(gains)
    merged["command"] = "python eval/rl_countdown.py --combine " + " ".join(paths) + f" --out {out}"
    _finish(merged, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", default="runs/masked_countdown/final", help="SFT checkpoint both methods start from")
    parser.add_argument("--methods", default="coupled,d1", help="comma-separated subset of coupled,d1")
    parser.add_argument("--steps", type=int, default=400, help="RL steps per method")
    parser.add_argument("--eval-every", type=int, default=100, help="held-out accuracy every N steps")
    parser.add_argument("--problems", type=int, default=266,
                        help="held-out test problems (the recipes' countdown test split holds 266: all of them)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipes')")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--runs", default="runs/rl_countdown_bench", help="where the RL runs write")
    parser.add_argument("--out", default="eval/results/rl_countdown", help="output path without extension")
    parser.add_argument("--probe-prompts", type=int, default=0,
                        help="diagnostic: RL on this many training prompts only; sampled success on them before/after")
    parser.add_argument("--probe-skip", type=int, default=0, help="diagnostic: skip this many training prompts first")
    parser.add_argument("--combine", nargs="+", metavar="JSON",
                        help="merge finished runs (e.g. one per method, run in parallel) into --out; trains nothing")
    parser.add_argument("--evaluate", nargs="+", metavar="CHECKPOINT",
                        help="held-out greedy / sampled accuracy of finished checkpoints into --out; trains nothing")
    parser.add_argument("--all-orderings", action="store_true",
                        help="with --evaluate: score every held-out problem with its numbers in every distinct order")
    parser.add_argument("overrides", nargs="*", help="extra recipe overrides for both methods (key=value)")
    args = parser.parse_args(argv)
    if args.all_orderings and not args.evaluate:
        parser.error("--all-orderings only applies to --evaluate")
    if args.combine:
        return combine(args.combine, Path(args.out))
    if args.evaluate:
        return evaluate_checkpoints(args)
    if args.probe_prompts:
        torch.set_num_threads(args.threads)
        return seen_prompt_probe(args)
    torch.set_num_threads(args.threads)
    command = "python eval/rl_countdown.py " + " ".join(argv if argv is not None else sys.argv[1:])
    sft_dir = Path(args.sft)
    if not sft_dir.is_dir():
        raise SystemExit(f"{sft_dir} not found: run `textdiff train recipes/masked/countdown_sft.yaml` first")

    results = {"command": command.strip(), "sft_checkpoint": str(sft_dir), "steps": args.steps,
               "test_problems": args.problems, "methods": {},
               "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                           "device": "cuda" if torch.cuda.is_available() else "cpu",
                           "load_average_at_start": os.getloadavg()}}
    sft_results = sft_dir.parent / "results.json"
    if sft_results.exists():
        sft = json.loads(sft_results.read_text())
        results["sft_recipe_task_eval"] = {k: sft.get("task_eval", {}).get(k) for k in ("accuracy", "problems")}
        results["sft_model_parameters"] = sft.get("model_parameters")
    for name in args.methods.split(","):
        overrides = [
            f"rl.init_from={sft_dir}", f"run.output_dir={args.runs}/{name}", f"run.seed={args.seed}",
            f"trainer.max_steps={args.steps}", f"rl.eval_steps={args.eval_every}", f"eval.task_problems={args.problems}",
            "trainer.report_to=[]", "trainer.save_steps=null", "run.overwrite=true", *args.overrides,
        ]
        if args.lr is not None:
            overrides.append(f"trainer.learning_rate={args.lr}")
        recipe = load_recipe(ROOT / RECIPES[name], overrides)
        start = time.time()
        run = rl_from_recipe(recipe, recipe_path=RECIPES[name])
        logs = run["log_history"]
        results["methods"][name] = {
            "recipe": RECIPES[name],
            "overrides": overrides,
            "estimator": recipe.rl.estimator,
            "forward_passes_per_row": {"coupled": 3 if recipe.rl.all_masked_view else 2, "d1": 1}[recipe.rl.estimator],
            "accuracy_curve": [{k: a[k] for k in ("step", "accuracy", "mean_reward")} for a in run["accuracy_curve"]],
            "accuracy_before": run["accuracy_before"],
            "accuracy_after": run["accuracy_after"],
            "best_accuracy": max(a["accuracy"] for a in run["accuracy_curve"]),
            "seed": args.seed,
            "gain_points": 100 * (run["accuracy_after"] - run["accuracy_before"]),
            "standard_error_after": standard_error(run["accuracy_after"], args.problems),
            "reward_curve": run["reward_curve"],
            "kl_curve": [{"step": h["step"], "kl": h["kl"]} for h in logs if "kl" in h],
            "clip_ratio_curve": [{"step": h["step"], "clip": h["clip_ratio/region_mean"]}
                                 for h in logs if "clip_ratio/region_mean" in h],
            "train_runtime_s": run["train_runtime_s"],
            "seconds_per_step": run["train_runtime_s"] / args.steps,
            "wall_time_s": time.time() - start,
            "examples_after": run["accuracy_curve"][-1].get("examples", [])[:4],
        }
        print(f"{name}: test accuracy {run['accuracy_before']:.3f} -> {run['accuracy_after']:.3f} "
              f"({run['train_runtime_s']:.0f} s)", flush=True)
    _finish(results, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
