"""The parallel-decoding benchmark: task accuracy vs forward passes vs tokens/s of decoding settings (unmasking
rule x KV-cache mode, and any decoder a caller brings, e.g. an AR twin or a reference loop), timed round-robin.

    settings = settings_grid(["low_confidence", "threshold"], ["none", "dual"], gen_length=32, block_length=32)
    report = run_benchmark(settings, task, problems, {"masked": (model, tokenizer)}, gen_length=32, block_length=32)
    write_report(report, "eval/results/bench")        # bench.json, bench.md, bench.png (Pareto plot)

Every setting decodes the same problems in batches of `batch_size` (left-padded, as `textdiff.generate` decodes
a batch). Per batch the settings run one after another, the order rotated by one each batch, so machine-load
drift and warm caches hit all settings alike; an untimed warm-up decode of the first batch runs first. tokens/s
counts the whole `gen_length` canvas of every problem (Fast-dLLM's convention); NFE per problem is the forward
passes of the batch it was decoded in.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from textdiff.data import SFTCollator
from textdiff.data.tasks import Problem, Task
from textdiff.pipelines.text import decode_completion, left_pad
from textdiff.samplers.generate import generate, generate_autoregressive

__all__ = ["DECODERS", "RULE_OPTIONS", "Setting", "decode_autoregressive", "decode_masked", "markdown_table",
           "pareto_front", "plot_pareto", "run_benchmark", "settings_grid", "write_report"]

RULE_OPTIONS = {"threshold": {"threshold": 0.9}, "factor": {"factor": 1.0}}
"""the options a rule runs with in the grid unless the caller gives others (Fast-dLLM's defaults)."""


@dataclass
class Setting:
    """One decoding setting of the benchmark."""

    name: str
    """row label in the table and the plot."""
    sampler: str = "low_confidence"
    """masked unmasking rule (`textdiff.samplers.SAMPLERS`); unused by other decoders."""
    cache: str = "none"
    """KV-cache mode: none | prefix | dual."""
    steps: int | None = None
    """diffusion steps in total (None: one token per step, gen_length)."""
    block_length: int | None = None
    """semi-autoregressive block (None: the benchmark's block_length)."""
    options: dict = field(default_factory=dict)
    """rule options (threshold, factor, alg_temp, ...)."""
    stop_at_eos: bool = False
    """stop once every row has generated EOS."""
    model: str = "masked"
    """which of `run_benchmark`'s models (and its tokenizer) decodes this setting."""
    decoder: str = "generate"
    """which decoder runs it: "generate" (textdiff.generate), "ar" (greedy KV-cached AR) or a caller's own."""


def _label(rule: str, options: dict) -> str:
    return " ".join([rule, *(f"{v:g}" if isinstance(v, float) else str(v) for v in options.values())])


def settings_grid(rules: Sequence[str], caches: Sequence[str], *, gen_length: int, block_length: int,
                  steps: int | None = None, rule_options: dict[str, dict] | None = None) -> list[Setting]:
    """Every rule under every cache mode (rules outer), named "threshold 0.9 + dual"; a rule's options come from
    `rule_options`, else `RULE_OPTIONS`."""
    from textdiff.samplers.generate import CACHE_MODES, check_decoding_schedule
    from textdiff.samplers.registry import SAMPLERS

    for rule in rules:
        if rule not in SAMPLERS:
            raise ValueError(f"unknown rule {rule!r}; known rules: {', '.join(sorted(SAMPLERS))}")
    for cache in caches:
        if cache not in CACHE_MODES:
            raise ValueError(f"unknown cache mode {cache!r}; known: {', '.join(CACHE_MODES)}")
    check_decoding_schedule(gen_length, steps or gen_length, block_length)
    rule_options = {**RULE_OPTIONS, **(rule_options or {})}
    rows = []
    for rule in rules:
        options = dict(rule_options.get(rule, {}))
        for cache in caches:
            name = _label(rule, options) + ("" if cache == "none" else f" + {cache}")
            rows.append(Setting(name=name, sampler=rule, cache=cache, steps=steps, block_length=block_length,
                                options=options))
    return rows


# ------------------------------------------------------------------------------------------------ decoders

Decoder = Callable[..., tuple[list[list[int]], float]]
"""decoder(setting, model, tokenizer, rows, *, gen_length, block_length) -> (generated ids per row, NFE per row):
`rows` are encoded prompts; the generated ids are the `gen_length` tokens after each prompt."""


@torch.no_grad()
def decode_masked(setting: Setting, model, tokenizer, rows: list[list[int]], *, gen_length: int,
                  block_length: int) -> tuple[list[list[int]], float]:
    """`textdiff.generate` on the left-padded batch."""
    ids, attention_mask = left_pad(rows, tokenizer.pad_token_id, next(model.parameters()).device)  # [B, P]
    out = generate(model, ids, attention_mask=attention_mask, gen_length=gen_length,
                   steps=setting.steps or gen_length, block_length=setting.block_length or block_length,
                   sampler=setting.sampler, cache=setting.cache, stop_at_eos=setting.stop_at_eos,
                   eos_token_id=tokenizer.eos_token_id, **setting.options)
    return out.sequences[:, ids.shape[1]:].tolist(), float(out.nfe)


@torch.no_grad()
def decode_autoregressive(setting: Setting, model, tokenizer, rows: list[list[int]], *, gen_length: int,
                          block_length: int) -> tuple[list[list[int]], float]:
    """Greedy KV-cached AR decoding, row by row (stopping at EOS when the setting says so)."""
    device = next(model.parameters()).device
    generated, nfe = [], 0
    for row in rows:
        out = generate_autoregressive(model, torch.tensor([row], device=device), gen_length=gen_length,
                                      eos_token_id=tokenizer.eos_token_id if setting.stop_at_eos else None)
        generated.append(out.sequences[0, len(row):].tolist())
        nfe += out.nfe
    return generated, nfe / len(rows)


DECODERS: dict[str, Decoder] = {"generate": decode_masked, "ar": decode_autoregressive}
"""the decoders a `Setting.decoder` names; `run_benchmark(decoders=...)` adds a caller's own."""


# ------------------------------------------------------------------------------------------------ the run


def run_benchmark(settings: Sequence[Setting], task: Task, problems: Sequence[Problem], models: dict[str, tuple],
                  *, gen_length: int, block_length: int, batch_size: int = 1, baseline: str | None = None,
                  decoders: dict[str, Decoder] | None = None, warmup: bool = True, progress: bool = True,
                  max_examples: int = 3) -> dict:
    """Decode `problems` with every setting, round-robin per batch; returns the report (`results`: one row per
    setting with accuracy, agreement with the `baseline` setting's answers, NFE and seconds per problem,
    tokens/s and speed vs the baseline). `models` maps a `Setting.model` key to (model, tokenizer)."""
    decoders = {**DECODERS, **(decoders or {})}
    if not settings or not problems:
        raise ValueError("run_benchmark needs at least one setting and one problem")
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise ValueError(f"setting names must be unique, got {names}")
    for s in settings:
        if s.model not in models:
            raise ValueError(f"setting {s.name!r} decodes with model {s.model!r}, not among {sorted(models)}")
        if s.decoder not in decoders:
            raise ValueError(f"setting {s.name!r}: unknown decoder {s.decoder!r}; known: {sorted(decoders)}")
    baseline = baseline if baseline is not None else settings[0].name
    if baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not a setting name")
    for model, _ in models.values():
        model.eval()
    # 1. every model's prompts, encoded as SFT encodes them, before any clock runs
    rows = {key: [SFTCollator(tok, max_length=10**9).encode_prompt(p.prompt) for p in problems]
            for key, (_, tok) in models.items()}
    batches = [range(i, min(i + batch_size, len(problems))) for i in range(0, len(problems), batch_size)]
    stats = {s.name: {"time": 0.0, "nfe": 0.0, "correct": 0, "agree": 0, "examples": []} for s in settings}

    def decode(setting: Setting, batch: range) -> tuple[list[list[int]], float, float]:
        model, tok = models[setting.model]
        start = time.perf_counter()
        generated, nfe = decoders[setting.decoder](setting, model, tok, [rows[setting.model][i] for i in batch],
                                                   gen_length=gen_length, block_length=block_length)
        return generated, nfe, time.perf_counter() - start

    if warmup:  # first calls pay for allocation and kernel selection: not a property of the setting
        for setting in settings:
            decode(setting, batches[0])
    # 2. round-robin: per batch, every setting, the order rotated each batch
    for b, batch in enumerate(batches):
        texts = {}
        order = list(settings[b % len(settings):]) + list(settings[: b % len(settings)])
        for setting in order:
            generated, nfe, elapsed = decode(setting, batch)
            model, tok = models[setting.model]
            mask_id = None if model.config.attention_mode == "causal" else model.config.mask_token_id
            s = stats[setting.name]
            s["time"] += elapsed
            s["nfe"] += nfe * len(batch)
            texts[setting.name] = []
            for i, ids in zip(batch, generated):
                text = decode_completion(tok, ids, mask_id)
                texts[setting.name].append(text)
                s["correct"] += bool(task.verify(problems[i], text))
                if len(s["examples"]) < max_examples:
                    s["examples"].append({"prompt": problems[i].prompt, "answer": problems[i].answer,
                                          "completion": text})
        for name, row_texts in texts.items():
            stats[name]["agree"] += sum(a == b for a, b in zip(row_texts, texts[baseline]))
        if progress:
            print(f"batch {b + 1}/{len(batches)}", file=sys.stderr, flush=True)

    # 3. per-setting figures
    n = len(problems)
    base_time = stats[baseline]["time"]
    results = []
    for setting in settings:
        s = stats[setting.name]
        results.append({
            "name": setting.name,
            "setting": {k: v for k, v in asdict(setting).items() if k != "name"},
            "accuracy": s["correct"] / n,
            "agreement_with_baseline": s["agree"] / n,
            "nfe_per_problem": s["nfe"] / n,
            "seconds_per_problem": s["time"] / n,
            "tokens_per_s": gen_length * n / s["time"],
            "speedup_vs_baseline": base_time / s["time"],
            "examples": s["examples"],
        })
    return {"task": task.name, "problems": n, "gen_length": gen_length, "block_length": block_length,
            "batch_size": batch_size, "baseline": baseline, "threads": torch.get_num_threads(), "results": results}


# ------------------------------------------------------------------------------------------------ writers


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (speed, accuracy) points no other point beats on both (ties on accuracy: the faster), by speed."""
    front, best = [], -float("inf")
    for speed, acc in sorted(points, key=lambda p: (-p[0], -p[1])):
        if acc > best:
            front.append((speed, acc))
            best = acc
    return sorted(front)


def markdown_table(report: dict) -> str:
    base = report["baseline"]
    header = (f"| setting | accuracy | same answer as {base} | NFE / problem | s / problem | tokens/s | "
              f"speed vs {base} |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['name']} | {100 * r['accuracy']:.1f}% | {100 * r['agreement_with_baseline']:.0f}% | "
                     f"{r['nfe_per_problem']:.1f} | {r['seconds_per_problem']:.3f} | {r['tokens_per_s']:.0f} | "
                     f"{r['speedup_vs_baseline']:.2f}x |")
    return "\n".join(lines)


def plot_pareto(report: dict, path: str | Path, *, device: str = "CPU") -> None:
    """Accuracy vs tokens/s, one marker per cache mode, AR / custom decoders in red, the Pareto front dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for row in report["results"]:
        setting = row["setting"]
        color = "tab:blue" if setting["decoder"] == "generate" else "tab:red"
        marker = {"none": "o", "prefix": "s", "dual": "D"}.get(setting["cache"], "^")
        ax.scatter(row["tokens_per_s"], 100 * row["accuracy"], c=color, marker=marker, s=45, alpha=0.85)
        ax.annotate(row["name"], (row["tokens_per_s"], 100 * row["accuracy"]), fontsize=6.5, xytext=(4, 2),
                    textcoords="offset points")
    front = pareto_front([(r["tokens_per_s"], 100 * r["accuracy"]) for r in report["results"]])
    ax.plot(*zip(*front), "--", color="gray", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel(f"tokens / s ({report['gen_length']}-token canvas, batch {report['batch_size']}, {device})")
    ax.set_ylabel(f"{report['task']} accuracy (%)")
    ax.set_title(f"parallel decoding: gen length {report['gen_length']}, block {report['block_length']}, "
                 f"{report['problems']} problems (o none, s prefix, D dual cache; red: other decoders)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_report(report: dict, out: str | Path) -> dict[str, Path]:
    """`out`.json (the report), `out`.md (the table) and `out`.png (the Pareto plot); returns the paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {"json": out.with_suffix(".json"), "md": out.with_suffix(".md"), "png": out.with_suffix(".png")}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["md"].write_text(markdown_table(report) + "\n")
    plot_pareto(report, paths["png"])
    return paths
