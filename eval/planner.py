"""Latent planner + AR decoder against the AR decoder alone and the masked model, on held-out stdlib prompts.

The three systems share the BPE tokenizer, the paragraphs (stdlib docstrings, the planner's train split) and
the decoder size (3 blocks x 128 wide); the AR decoder and the masked twin also share the optimiser steps
(2000 at batch 32, the autoencoder's); the planner's denoiser trains 1000 steps over the frozen autoencoder:

    nice -n 10 python -m textdiff.cli train recipes/planner/stdlib_autoencoder.yaml trainer.report_to=[]
    nice -n 10 python -m textdiff.cli train recipes/planner/stdlib_planner.yaml trainer.report_to=[]
    nice -n 10 python -m textdiff.cli train recipes/planner/stdlib_ar.yaml trainer.report_to=[] \
        tokenizer.name=runs/planner_ae/final
    nice -n 10 python eval/planner.py          # trains the masked twin first when --masked does not exist

The masked twin is recipes/masked/stdlib_pretrain.yaml at the decoder's size on the planner's train
paragraphs (written to a jsonl file, packed into 41-token blocks with EOS between paragraphs), same steps,
batch and lr.

A prompt is the first 6 tokens of a held-out paragraph (the planner's condition length); every system writes
up to 34 more tokens (the planner's decoder and the AR model stop at EOS; the masked model fills a 34-token
canvas after [EOS] + prompt, cut at its first EOS). Systems: planner (20 DDIM steps from fresh noise; CFG
scale 1 and 2; greedy or top-p 0.9 decoder), AR alone (top-p 0.9; greedy), masked (MDLM ancestral,
temperature 1, 34 steps), the oracle plan (the encoder of the true paragraph, greedy: the planner's upper
bound) and the references themselves.

Metrics (textdiff.evaluation.metrics, whitespace words): repetition = fraction of repeated 4-grams within a
paragraph; self-BLEU and distinct-2/3 across the samples of one prompt (continuations only), averaged over
prompts; gen-PPL under SmolLM2-135M of the whole paragraph; faithfulness = BLEU-4 of the continuation against
the held-out paragraph's true continuation, and the cosine between the autoencoder's slots of the generated
and the true paragraph. Writes eval/results/planner.{json,png}.
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

import textdiff.families  # noqa: F401  (registers the planner's Auto classes)
from textdiff.config import load_recipe
from textdiff.evaluation.metrics import (
    distinct_n,
    generative_perplexity,
    load_judge,
    repetition_rate,
    self_bleu,
    sentence_bleu,
)
from textdiff.families.planner import generate_paragraphs
from textdiff.families.planner.data import load_paragraphs
from textdiff.families.planner.sampling import decode
from textdiff.modeling.checkpoint_io import load_model, load_tokenizer
from textdiff.samplers.generate import generate

PROMPT_TOKENS = 6  # recipes/planner/*.yaml objective.prompt_tokens
NEW_TOKENS = 34  # objective.max_tokens 40 - the prompt
TRAIN = "nice -n 10 python -m textdiff.cli train"
AE = "runs/planner_ae/final"


def masked_overrides(args, corpus: Path) -> list[str]:
    """recipes/masked/stdlib_pretrain.yaml at the planner decoder's size, data, steps, batch and lr."""
    return ["model.hidden_size=128", "model.num_hidden_layers=3", "model.num_attention_heads=4",
            "model.num_key_value_heads=2", "model.max_position_embeddings=64",
            f"tokenizer.name={args.tokenizer}", f"data.corpus={corpus}",
            f"data.seq_len={PROMPT_TOKENS + NEW_TOKENS + 1}", "data.valid_percent=3.0",
            f"trainer.max_steps={args.masked_steps}", "trainer.per_device_train_batch_size=32",
            "trainer.learning_rate=2.0e-3", "trainer.warmup_steps=100", "trainer.eval_steps=500",
            "trainer.save_steps=null", "trainer.report_to=[]", "eval.elbo_samples=4", "sample.prompts=[]",
            f"run.output_dir={Path(args.masked).parent}"]


def train_masked(args, train_paragraphs: list[str]) -> dict:
    from textdiff.train.run import train_from_recipe

    corpus = Path(args.masked).parent / "paragraphs_train.jsonl"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    corpus.write_text("".join(json.dumps({"text": p}) + "\n" for p in train_paragraphs))
    overrides = masked_overrides(args, corpus)
    start = time.perf_counter()
    res = train_from_recipe(load_recipe(ROOT / "recipes" / "masked" / "stdlib_pretrain.yaml", overrides))
    return {"overrides": overrides, "train_seconds": time.perf_counter() - start,
            "final_eval": res["final_eval"]}


def split_prompt(text: str, prompt: str) -> str:
    """The continuation of a paragraph that starts with `prompt` (BPE decoding is a concatenation)."""
    if not text.startswith(prompt):
        raise ValueError(f"generated paragraph {text[:60]!r} does not start with its prompt {prompt!r}")
    return text[len(prompt):]


@torch.no_grad()
def masked_paragraphs(model, tokenizer, prompts: list[str], num_samples: int, seed: int) -> list[list[str]]:
    """num_samples paragraphs per prompt: [EOS] + prompt + a 34-token canvas, MDLM ancestral at temperature 1,
    cut at the first EOS of the canvas."""
    g = torch.Generator().manual_seed(seed)
    eos, out = tokenizer.eos_token_id, []
    for prompt in prompts:
        row = [eos] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([row] * num_samples)
        seqs = generate(model, ids, gen_length=NEW_TOKENS, steps=NEW_TOKENS, block_length=NEW_TOKENS,
                        sampler="ancestral", temperature=1.0, generator=g).sequences[:, len(row):]
        texts = []
        for s in seqs.tolist():
            s = s[: s.index(eos)] if eos in s else s
            texts.append(prompt + tokenizer.decode(s))
        out.append(texts)
    return out


@torch.no_grad()
def oracle_paragraphs(planner, tokenizer, prompts: list[str], references: list[list[int]]) -> list[list[str]]:
    """The planner's upper bound: the encoder's slots of the true paragraph, greedy decoding after the
    prompt."""
    out = []
    for prompt, ids in zip(prompts, references):
        z = planner.encode(torch.tensor([ids]))
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        row = decode(planner, z, tokenizer, prompts=[prompt_ids], max_new_tokens=NEW_TOKENS)[0]
        out.append([tokenizer.decode(row)])
    return out


@torch.no_grad()
def slot_cosine(planner, tokenizer, texts: list[str], reference: str) -> float:
    """Mean cosine between the autoencoder's flattened slots of each text and of the reference paragraph."""
    def slots(text):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: PROMPT_TOKENS + NEW_TOKENS]
        return planner.encode(torch.tensor([ids])).flatten()

    ref = slots(reference)
    return sum(float(torch.cosine_similarity(slots(t), ref, dim=0)) for t in texts) / len(texts)


def mean_over(groups: list[list[str]] | None, metric) -> float | None:
    """Mean of metric(group) over the groups it is defined on (distinct-n raises without an n-gram)."""
    if groups is None:
        return None
    values = []
    for group in groups:
        try:
            values.append(metric(group))
        except ValueError:
            continue
    return sum(values) / len(values) if values else None


def score(name: str, groups: list[list[str]], prompts: list[str], references: list[str], judge, planner,
          tokenizer) -> dict:
    """The metrics of one system: groups[i] = the paragraphs written for prompts[i]."""
    flat = [t for g in groups for t in g]
    conts = [[split_prompt(t, p) for t in g] for g, p in zip(groups, prompts)]
    true_conts = [split_prompt(r, p) for r, p in zip(references, prompts)]
    multi = [c for c in conts if len(c) > 1] or None
    gp = generative_perplexity([t if len(t.split()) else "." for t in flat], judge=judge)
    m = {
        "paragraphs": len(flat), "samples_per_prompt": len(groups[0]),
        "repetition_4gram": repetition_rate(flat, n=4),
        "self_bleu": mean_over(multi, self_bleu),
        "distinct_2": mean_over(multi, lambda c: distinct_n(c, 2)),
        "distinct_3": mean_over(multi, lambda c: distinct_n(c, 3)),
        "distinct_2_all": distinct_n([c for g in conts for c in g], 2),
        "gen_ppl_smollm2": gp["perplexity"],
        "reference_bleu4": sum(sentence_bleu(c.split(), [tc.split()]) for g, tc in zip(conts, true_conts)
                               for c in g) / len(flat),
        "slot_cosine_to_reference": sum(slot_cosine(planner, tokenizer, g, r)
                                        for g, r in zip(groups, references)) / len(groups),
        "mean_words": sum(len(t.split()) for t in flat) / len(flat),
        "empty_continuations": sum(not c.strip() for g in conts for c in g),
    }
    shown = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float))
    print(f"[score] {name}: {shown}", flush=True)
    return m


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("repetition_4gram", "repeated 4-grams in a paragraph (lower = better)"),
              ("self_bleu", "self-BLEU across samples of a prompt (lower = more diverse)"),
              ("distinct_2", "distinct-2 across samples of a prompt"),
              ("gen_ppl_smollm2", "gen. PPL under SmolLM2-135M (lower = more fluent)"),
              ("reference_bleu4", "BLEU-4 vs the true continuation (faithfulness)"),
              ("slot_cosine_to_reference", "cosine of AE slots to the true paragraph")]
    systems = results["systems"]
    names = list(systems)
    fig, axes = plt.subplots(2, 3, figsize=(18, 8.5))
    for ax, (key, title) in zip(axes.flat, panels):
        vals = [systems[n][key] if systems[n][key] is not None else float("nan") for n in names]
        colors = ["C0" if n.startswith("planner") else "C1" if n.startswith("ar") else "C2"
                  if n.startswith("masked") else "C7" for n in names]
        ax.barh(names, vals, color=colors)
        for i, v in enumerate(vals):
            if not math.isnan(v):
                ax.text(v, i, f" {v:.3g}", va="center", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.invert_yaxis()
    settings = results["settings"]
    fig.suptitle(f"planner + AR vs AR alone vs masked: {settings['prompts']} held-out stdlib prompts x "
                 f"{settings['samples']} samples (blue planner, orange AR, green masked, grey bounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--planner", default=str(ROOT / "runs" / "planner_stdlib" / "final"))
    p.add_argument("--ar", default=str(ROOT / "runs" / "planner_ar" / "final"))
    p.add_argument("--masked", default=str(ROOT / "runs" / "planner_masked" / "final"),
                   help="trained (recipes/masked/stdlib_pretrain.yaml, see masked_overrides) when missing")
    p.add_argument("--tokenizer", default=str(ROOT / "runs" / "planner_ae" / "final"))
    p.add_argument("--masked-steps", type=int, default=2000)
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--ddim-steps", type=int, default=20)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-only", action="store_true", help="train the masked twin and stop")
    p.add_argument("--results", default=str(ROOT / "eval" / "results" / "planner"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    wall = time.perf_counter()

    # 1. data: the planner's split; prompts = first 6 tokens of held-out paragraphs long enough to continue
    train_texts, valid_texts, meta = load_paragraphs("stdlib", 3.0)
    tokenizer = load_tokenizer(args.tokenizer)
    masked_training = None
    if not Path(args.masked).is_dir():
        masked_training = train_masked(args, train_texts)
    if args.train_only:
        return 0
    encoded = tokenizer(valid_texts, add_special_tokens=False)["input_ids"]
    rows = [ids[: PROMPT_TOKENS + NEW_TOKENS] for ids in encoded if len(ids) >= PROMPT_TOKENS + 8]
    rows = rows[: args.prompts]
    prompts = [tokenizer.decode(r[:PROMPT_TOKENS]) for r in rows]
    references = [tokenizer.decode(r) for r in rows]
    assert all(r.startswith(q) for r, q in zip(references, prompts))

    planner, ar, masked = (load_model(path).eval() for path in (args.planner, args.ar, args.masked))
    for path, m in ((args.ar, ar), (args.masked, masked)):
        if m.config.vocab_size != planner.config.vocab_size:
            raise ValueError(f"{path}: vocabulary {m.config.vocab_size} is not the planner's "
                             f"{planner.config.vocab_size} (train it with tokenizer.name={args.tokenizer})")
    judge = load_judge("smollm2")

    # 2. generate
    def per_prompt(results: list[dict], n: int) -> list[list[str]]:
        return [[r["text"] for r in results[i * n: (i + 1) * n]] for i in range(len(prompts))]

    S, generations, seconds = args.samples, {}, {}
    runs = {}
    for g in args.guidance:
        runs[f"planner cfg{g:g} greedy"] = (planner, {"guidance_scale": g, "temperature": 0.0}, S)
    runs[f"planner cfg{args.guidance[0]:g} top-p0.9"] = (
        planner, {"guidance_scale": args.guidance[0], "temperature": 1.0, "top_p": 0.9}, S)
    runs["ar top-p0.9"] = (ar, {"temperature": 1.0, "top_p": 0.9}, S)
    runs["ar greedy"] = (ar, {"temperature": 0.0}, 1)
    for name, (model, options, n) in runs.items():
        start = time.perf_counter()
        out = generate_paragraphs(model, tokenizer, prompts, num_samples=n, steps=args.ddim_steps,
                                  max_new_tokens=NEW_TOKENS, seed=args.seed, **options)
        generations[name], seconds[name] = per_prompt(out, n), time.perf_counter() - start
        print(f"[generate] {name}: {seconds[name]:.0f} s", flush=True)
    start = time.perf_counter()
    generations["masked ancestral T1"] = masked_paragraphs(masked, tokenizer, prompts, S, args.seed)
    seconds["masked ancestral T1"] = time.perf_counter() - start
    start = time.perf_counter()
    generations["oracle plan (true slots) greedy"] = oracle_paragraphs(planner, tokenizer, prompts, rows)
    seconds["oracle plan (true slots) greedy"] = time.perf_counter() - start
    generations["reference paragraphs"] = [[r] for r in references]

    # 3. score
    systems = {name: score(name, groups, prompts, references, judge, planner, tokenizer)
               for name, groups in generations.items()}
    for name, metrics in systems.items():
        metrics["seconds_per_paragraph"] = seconds[name] / metrics["paragraphs"] if name in seconds else None
    examples = [{"prompt": prompts[i], "reference": references[i],
                 **{name: groups[i][:2] for name, groups in generations.items()
                    if name != "reference paragraphs"}}
                for i in range(min(6, len(prompts)))]

    trained = {}
    for key, path in (("planner", args.planner), ("ar", args.ar), ("masked", args.masked),
                      ("autoencoder", args.tokenizer)):
        res_path = Path(path).parent / "results.json"
        if res_path.is_file():
            res = json.loads(res_path.read_text())
            trained[key] = {"checkpoint": path, "final_eval": res.get("final_eval"),
                            "train_runtime_s": res.get("train_runtime_s"),
                            "max_steps": res.get("config", {}).get("trainer", {}).get("max_steps"),
                            "model_parameters": res.get("model_parameters"),
                            "trainable_parameters": res.get("trainable_parameters")}
    results = {
        "command": "nice -n 10 python eval/planner.py "
                   + shlex.join(argv if argv is not None else sys.argv[1:]),
        "training_commands": [
            f"{TRAIN} recipes/planner/stdlib_autoencoder.yaml trainer.report_to=[]",
            f"{TRAIN} recipes/planner/stdlib_planner.yaml trainer.report_to=[]",
            f"{TRAIN} recipes/planner/stdlib_ar.yaml trainer.report_to=[] tokenizer.name={AE}",
            "masked: recipes/masked/stdlib_pretrain.yaml with "
            + " ".join(masked_overrides(args, Path(args.masked).parent / "paragraphs_train.jsonl")),
        ],
        "settings": vars(args) | {"prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS},
        "data": meta, "trained": trained, "masked_training_this_run": masked_training,
        "systems": systems, "examples": examples, "wall_seconds": time.perf_counter() - wall,
        "notes": [
            ("words = whitespace tokens; repetition and gen-PPL over the whole paragraph (prompt included), "
             "self-BLEU / distinct-n / reference BLEU over the continuation only"),
            "ar greedy and the oracle write one paragraph per prompt (deterministic): no diversity figures",
            "the reference row scores the true held-out paragraphs (prompt + 34 tokens at most)",
            "slot cosine uses the planner's own encoder: it favours the planner, which plans in that space",
        ],
    }
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')} ({results['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
