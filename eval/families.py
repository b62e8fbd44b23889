"""Family comparison at equal size, data and tokens: masked, continuous (with / without self-conditioning, with /
without time warping), CADD (hard and soft hints) and AR, each trained from its stdlib recipe at one tiny size.

    nice -n 10 python eval/families.py --train-steps 300 --seq-len 64 --vocab-size 2048 --gen-length 64 --steps 16 32 64
    nice -n 10 python eval/families.py --train-steps 40 --num-samples 4 --steps 8 16 --out /tmp/fam   # smoke

Per family: the likelihood figure it has (masked: ELBO bound; CADD: the full ELBO bound = masked CE + the latents'
continuous KL, and its CE part, which is NOT a bound; continuous: CDCD's CE averaged over noise levels, not a
bound either; AR: exact), then unconditional samples at each step count (temperature 1: masked / CADD with MDLM's
ancestral rule, AR sampled, continuous from its random start) scored by generative perplexity under the
SmolLM2-135M judge (no family trained on its data) and under the AR twin, distinct-2/3 and self-BLEU (in the
models' own BPE tokens), wall-clock per sample and forward passes per step; and a timing of CADD's step against
the masked model's at equal size. Prefix-conditioned samples: each family continues the first --prefix-length
tokens of held-out blocks (one step count, --prefix-steps); the judge scores the continuation given the prefix,
next to the held-out blocks' true continuations. Writes eval/results/families.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textdiff.config import load_recipe
from textdiff.evaluation.metrics import distinct_n, generative_perplexity, load_judge, self_bleu
from textdiff.families import cadd as cadd_family
from textdiff.families.continuous.sampling import sample_tokens
from textdiff.modeling.checkpoint_io import load_model, load_tokenizer
from textdiff.samplers.generate import generate, generate_autoregressive
from textdiff.train.run import train_from_recipe

RUNS = {  # name: (recipe family folder, overrides)
    "masked": ("masked", []),
    "cadd": ("cadd", []),
    "continuous": ("continuous", []),
    "continuous_no_selfcond": ("continuous", ["objective.self_condition=0"]),
    "continuous_no_warp": ("continuous", ["objective.time_warp=false"]),
    "continuous_no_selfcond_no_warp": ("continuous", ["objective.self_condition=0", "objective.time_warp=false"]),
    "ar": ("ar", []),
}
SAMPLERS = {  # name: (trained run, how it samples)
    "masked": ("masked", {}),
    "cadd_hard": ("cadd", {"z0": "hard", "tau_max": 1.0}),
    "cadd_soft": ("cadd", {"z0": "soft", "tau_max": 1.0}),
    "cadd_hard_tau2.5": ("cadd", {"z0": "hard", "tau_max": 2.5}),
    "continuous": ("continuous", {}),
    "continuous_no_selfcond": ("continuous_no_selfcond", {}),
    "continuous_no_warp": ("continuous_no_warp", {}),
    "continuous_no_selfcond_no_warp": ("continuous_no_selfcond_no_warp", {}),
    "ar": ("ar", {}),
}

NOTES = [
    ("masked / CADD sample with MDLM's ancestral rule at temperature 1 (one block); AR samples at temperature 1 from "
     "a document boundary; continuous: Euler from noise, snapped to the nearest embedding"),
    "diversity metrics count the models' own BPE tokens",
    ("CADD's likelihood is the full ELBO: the reverse model's latent mean is the soft estimate reweighted by the "
     "exact Gaussian likelihood of z_t (textdiff.families.cadd.latent.bayes_z0)"),
]


def size_overrides(args) -> list[str]:
    return [f"model.hidden_size={args.hidden}", f"model.num_hidden_layers={args.layers}",
            "model.num_attention_heads=4", "model.num_key_value_heads=2",
            f"model.max_position_embeddings={max(256, args.seq_len + 1)}",  # AR: a boundary token + seq_len
            f"data.seq_len={args.seq_len}", f"data.max_valid_blocks={args.valid_blocks}",
            f"trainer.max_steps={args.train_steps}", f"trainer.per_device_train_batch_size={args.batch_size}",
            f"trainer.warmup_steps={max(1, args.train_steps // 10)}", f"trainer.learning_rate={args.lr}",
            "trainer.eval_steps=null", "trainer.save_steps=null", "trainer.report_to=[]", "trainer.logging_steps=50",
            "trainer.eval_on_start=true", f"eval.elbo_samples={args.elbo_samples}", "sample.prompts=[]",
            f"tokenizer.vocab_size={args.vocab_size}"]


def train_all(args) -> dict:
    out, results, tokenizer_dir = Path(args.out), {}, None
    for name, (folder, extra) in RUNS.items():
        run_dir = out / "runs" / name
        overrides = size_overrides(args) + extra + [f"run.output_dir={run_dir}"]
        if tokenizer_dir is not None:  # every family reads the same BPE (trained once, by the first run)
            overrides.append(f"tokenizer.name={tokenizer_dir}")
        start = time.perf_counter()
        res = train_from_recipe(load_recipe(ROOT / "recipes" / folder / "stdlib_pretrain.yaml", overrides))
        tokenizer_dir = tokenizer_dir or res["checkpoint"]
        evals = [h["eval_loss"] for h in res["log_history"] if "eval_loss" in h]
        results[name] = {"checkpoint": res["checkpoint"], "train_seconds": time.perf_counter() - start,
                         "eval_loss_nats_init": evals[0], "final_eval": res["final_eval"],
                         "train_tokens": args.train_steps * args.batch_size * args.seq_len,
                         "parameters": res["model_parameters"]}
        print(f"[train] {name}: valid {evals[0]:.3f} -> {evals[-1]:.3f} nats/token "
              f"({results[name]['train_seconds']:.0f} s)", flush=True)
    return results


@torch.no_grad()
def draw(name: str, model, tokenizer, how: dict, *, num_samples: int, gen_length: int, steps: int, seed: int,
         prefix: torch.Tensor | None = None):
    """(token-id rows [N, gen_length], forward passes per sample, seconds) of samples: unconditional, or continuing
    the clean token rows `prefix` [N, P] (the rows returned are the continuation only)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    prefix = torch.zeros((num_samples, 0), dtype=torch.long) if prefix is None else prefix
    P = prefix.shape[1]
    start = time.perf_counter()
    if name == "ar":
        boundary = torch.full((num_samples, 1), tokenizer.eos_token_id, dtype=torch.long)  # a document boundary
        out = generate_autoregressive(model, torch.cat([boundary, prefix], 1), gen_length=gen_length,
                                      temperature=1.0, generator=g)
        rows, nfe = out.sequences[:, 1 + P:], out.nfe
    elif name.startswith("continuous"):
        masks = torch.full((num_samples, gen_length), model.config.mask_token_id, dtype=torch.long)
        ids = torch.cat([prefix, masks], 1)
        keep = torch.arange(ids.shape[1])[None].expand_as(ids) < P  # the prefix is the condition, kept clean
        rows, nfe = sample_tokens(model, ids, keep, steps=steps, solver="euler",
                                  self_condition=bool(model.config.vector_self_condition), generator=g)
        rows = rows[:, P:]
    else:
        options = {"gen_length": gen_length, "steps": steps, "block_length": gen_length, "sampler": "ancestral",
                   "temperature": 1.0, "generator": g}
        out = cadd_family.generate(model, prefix, **options, **how) if how else generate(model, prefix, **options)
        rows, nfe = out.sequences[:, P:], out.nfe
    return rows.tolist(), nfe, time.perf_counter() - start


def continuation_judge_ppl(prefixes: list[str], continuations: list[str], judge) -> float:
    """Judge perplexity of the continuations given their prefixes: (NLL of prefix + continuation - NLL of the
    prefix) over the continuation's judge tokens, pooled over the texts."""
    full = generative_perplexity([p + c for p, c in zip(prefixes, continuations)], judge=judge)
    alone = generative_perplexity(prefixes, judge=judge)
    nll = sum(n * c for n, c in zip(full["nlls"], full["token_counts"])) - sum(
        n * c for n, c in zip(alone["nlls"], alone["token_counts"]))
    tokens = sum(full["token_counts"]) - sum(alone["token_counts"])
    return math.exp(nll / max(tokens, 1))


def ar_twin_nll(ar_model, rows: list[list[int]], start_id: int) -> float:
    """Mean NLL (nats/token) of the token rows under the AR twin, each scored after a document boundary."""
    ids = torch.tensor([[start_id] + r for r in rows])
    logits = ar_model(ids).logits[:, :-1].float()
    return float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:]))


def time_per_step(masked, cadd, *, batch: int, gen_length: int, steps: int, repeats: int) -> dict:
    """Seconds per step of the masked model and CADD (hard, K = 1) on equal canvases, interleaved, min of repeats."""
    empty = torch.zeros((batch, 0), dtype=torch.long)
    hows = {"masked": None, "cadd_hard": {"tau_max": 1.0}, "cadd_hard_tau2.5": {"tau_max": 2.5},
            "cadd_soft": {"z0": "soft", "tau_max": 1.0}}
    times = {key: [] for key in hows}
    for r in range(repeats):
        for key, how in hows.items():
            options = {"gen_length": gen_length, "steps": steps, "block_length": gen_length, "sampler": "ancestral",
                       "temperature": 1.0, "generator": torch.Generator().manual_seed(r)}
            start = time.perf_counter()
            out = generate(masked, empty, **options) if how is None else cadd_family.generate(cadd, empty, **options,
                                                                                               **how)
            times[key].append((time.perf_counter() - start) / out.nfe)
    best = {k: min(v) for k, v in times.items()}
    return {"seconds_per_step_min": best, "all": times, "batch": batch, "gen_length": gen_length, "steps": steps,
            "over_masked": {k: best[k] / best["masked"] for k in hows if k != "masked"}}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(22, 4.8))
    for name, rows in results["samples"].items():
        steps = [r["steps"] for r in rows]
        ppl = [r["judge_ppl"] for r in rows]
        style = "o-" if name != "ar" else "k*"
        axes[0].plot(steps, ppl, style, label=name)
        axes[1].plot([r["self_bleu"] for r in rows], ppl, style, label=name)
    axes[0].set(xscale="log", yscale="log", xlabel="sampling steps", ylabel="gen. PPL (SmolLM2-135M judge)",
                title="quality vs steps")
    axes[1].set(yscale="log", xlabel="self-BLEU (lower = more diverse)", ylabel="gen. PPL (judge)",
                title="quality vs diversity (points: step counts)")
    axes[0].legend(fontsize=7)
    names = list(results["likelihood"])
    bits = [results["likelihood"][n]["bits_per_token"] for n in names]
    axes[2].barh(names, bits, color=["C0" if results["likelihood"][n]["is_bound"] else "C7" for n in names])
    axes[2].set(xscale="log", xlabel="bits/token (blue: bound/exact on NLL, grey: not a bound)",
                title="validation likelihood figure")
    if "prefix_conditioned" in results:
        info = results["prefix_conditioned"]
        names = list(info["rows"])
        axes[3].barh(names, [info["rows"][n]["judge_ppl"] for n in names],
                     color=["k" if n == "held_out_text" else "C1" for n in names])
        axes[3].set(xscale="log", xlabel="judge PPL of the continuation given the prefix",
                    title=f"prefix-conditioned ({info['prefix_tokens']} + {info['continuation_tokens']} tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--valid-blocks", type=int, default=64)
    p.add_argument("--elbo-samples", type=int, default=8)
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--gen-length", type=int, default=128)
    p.add_argument("--steps", type=int, nargs="+", default=[16, 64, 128])
    p.add_argument("--timing-repeats", type=int, default=5)
    p.add_argument("--prefix-length", type=int, default=64, help="clean held-out tokens the prefixed samples continue")
    p.add_argument("--prefix-steps", type=int, default=64, help="sampling steps of the prefix-conditioned samples")
    p.add_argument("--out", default=str(ROOT / "runs" / "families"), help="training runs (checkpoints)")
    p.add_argument("--results", default=str(ROOT / "eval" / "results" / "families"))
    args = p.parse_args(argv)
    if not 0 < args.prefix_length < args.gen_length <= args.seq_len:
        p.error(f"need 0 < --prefix-length ({args.prefix_length}) < --gen-length ({args.gen_length}) <= --seq-len "
                f"({args.seq_len}): the prefixed samples continue held-out blocks of --seq-len tokens")
    if args.prefix_steps > args.gen_length - args.prefix_length:
        p.error(f"--prefix-steps {args.prefix_steps} exceeds the {args.gen_length - args.prefix_length} tokens a "
                "prefixed sample generates")
    torch.set_num_threads(1)
    wall = time.perf_counter()

    trained = train_all(args)
    models = {name: load_model(info["checkpoint"]).eval() for name, info in trained.items()}
    tokenizer = load_tokenizer(trained["masked"]["checkpoint"])
    judge = load_judge("smollm2")

    # 1. likelihood figures
    likelihood = {}
    for name, info in trained.items():
        ev = info["final_eval"]
        kind = {"masked": "ELBO bound", "ar": "exact", "cadd": "ELBO bound (masked CE + latent KL)"}.get(
            name, "CE averaged over noise levels (CDCD's figure; not a bound)")
        likelihood[name] = {"bits_per_token": ev["eval_bits_per_token"], "nats_per_token": ev["eval_loss"],
                            "kind": kind, "is_bound": not name.startswith("continuous"), "tokens": ev["eval_tokens"]}
    from textdiff.families.text import build_text_data

    recipe = load_recipe(ROOT / "recipes" / "cadd" / "stdlib_pretrain.yaml", size_overrides(args) + [
        f"run.output_dir={Path(args.out) / 'runs' / 'cadd'}", f"tokenizer.name={trained['masked']['checkpoint']}"])
    valid = build_text_data(recipe, trained["masked"]["checkpoint"])[2]
    parts = cadd_family.likelihood(models["cadd"], valid, num_samples=args.elbo_samples, seed=recipe.eval.seed)
    likelihood["cadd_ce_part"] = {"bits_per_token": parts["ce_bits_per_token"], "is_bound": False,
                                  "kind": "CE part of the CADD bound alone (z_t carries x0: not a bound)",
                                  "full_bound_same_draws_bits": parts["bits_per_token"], "tokens": parts["tokens"]}
    print("[likelihood]", {k: round(v["bits_per_token"], 3) for k, v in likelihood.items()}, flush=True)

    # 2. samples at each step count
    samples = {}
    for name, (run, how) in SAMPLERS.items():
        samples[name] = []
        for steps in ([args.gen_length] if name == "ar" else args.steps):
            rows, nfe, seconds = draw(name, models[run], tokenizer, how, num_samples=args.num_samples,
                                      gen_length=args.gen_length, steps=steps, seed=0)
            texts = [tokenizer.decode(r, skip_special_tokens=True) for r in rows]
            scored = [t if t.strip() else "." for t in texts]  # an empty text has no token to score
            gp = generative_perplexity(scored, judge=judge)
            bpe = tokenizer.tokenize
            entry = {"steps": steps, "judge_ppl": gp["perplexity"], "judge_mean_nll": gp["mean_nll"],
                     "ar_twin_ppl": math.exp(ar_twin_nll(models["ar"], rows, tokenizer.eos_token_id)),
                     "distinct_2": distinct_n(texts, 2, tokenizer=bpe), "distinct_3": distinct_n(texts, 3, tokenizer=bpe),
                     "self_bleu": self_bleu(texts, tokenizer=bpe), "seconds_per_sample": seconds / args.num_samples,
                     "forward_passes_per_sample": nfe, "forward_passes_per_step": nfe / steps,
                     "example": texts[0][:300]}
            samples[name].append(entry)
            print(f"[sample] {name} steps {steps}: judge PPL {entry['judge_ppl']:.1f}, AR-twin PPL "
                  f"{entry['ar_twin_ppl']:.1f}, d2 {entry['distinct_2']:.3f}, self-BLEU {entry['self_bleu']:.3f}, "
                  f"{entry['seconds_per_sample']:.3f} s/sample, {nfe} passes", flush=True)

    # 3. prefix-conditioned samples: the first tokens of held-out blocks, continued by each family (one step count);
    # the held-out blocks' true continuations are the reference row
    P = args.prefix_length
    blocks = torch.tensor([row["input_ids"] for row in valid.select(range(args.num_samples))])
    prefix, truth = blocks[:, :P], blocks[:, P:args.gen_length]
    prefix_texts = tokenizer.batch_decode(prefix, skip_special_tokens=True)
    prefixed, gen = {}, args.gen_length - P
    real = tokenizer.batch_decode(truth, skip_special_tokens=True)
    prefixed["held_out_text"] = {"judge_ppl": continuation_judge_ppl(prefix_texts, real, judge),
                                 "distinct_2": distinct_n(real, 2, tokenizer=tokenizer.tokenize),
                                 "self_bleu": self_bleu(real, tokenizer=tokenizer.tokenize), "example": real[0][:300]}
    for name, (run, how) in SAMPLERS.items():
        rows, nfe, seconds = draw(name, models[run], tokenizer, how, num_samples=args.num_samples, gen_length=gen,
                                  steps=gen if name == "ar" else args.prefix_steps, seed=0, prefix=prefix)
        texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
        prefixed[name] = {"steps": gen if name == "ar" else args.prefix_steps,
                          "judge_ppl": continuation_judge_ppl(prefix_texts, texts, judge),
                          "distinct_2": distinct_n(texts, 2, tokenizer=tokenizer.tokenize),
                          "self_bleu": self_bleu(texts, tokenizer=tokenizer.tokenize),
                          "forward_passes_per_sample": nfe, "seconds_per_sample": seconds / args.num_samples,
                          "example": texts[0][:300]}
        print(f"[prefix] {name}: judge PPL of the continuation {prefixed[name]['judge_ppl']:.1f} "
              f"(held-out text {prefixed['held_out_text']['judge_ppl']:.1f})", flush=True)
    prefixed_info = {"prefix_tokens": P, "continuation_tokens": gen, "example_prefix": prefix_texts[0][:300],
                     "rows": prefixed}

    # 4. CADD's step against the masked model's
    timing = time_per_step(models["masked"], models["cadd"], batch=args.num_samples, gen_length=args.gen_length,
                           steps=max(args.steps), repeats=args.timing_repeats)
    print(f"[timing] seconds per step over masked: {timing['over_masked']}", flush=True)

    results = {"command": "nice -n 10 python eval/families.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
               "settings": vars(args), "trained": trained, "likelihood": likelihood, "samples": samples,
               "prefix_conditioned": prefixed_info, "timing": timing, "wall_seconds": time.perf_counter() - wall,
               "notes": NOTES}
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')} ({results['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
