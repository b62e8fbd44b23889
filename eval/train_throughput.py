"""Training throughput, side by side in one run: masked-diffusion step vs AR step on the textdiff trunk vs HF
`LlamaForCausalLM` of the same size, plus achieved FLOP/s against this machine's measured matmul peak.

    python eval/train_throughput.py            # writes eval/results/train_throughput.{json,png}

Each round times one optimizer step (forward + backward + AdamW) of every variant in turn, so drift in machine
load hits all variants alike; the reported figure is the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from textdiff import TextDiffConfig, TextDiffModel
from textdiff.objectives import AutoregressiveObjective, MaskedDiffusionObjective

RESULTS = Path(__file__).parent / "results"


def matmul_peak_flops(n: int = 1024, repeats: int = 20) -> float:
    """Best observed float32 GEMM rate (FLOP/s) on this machine: the denominator of the utilisation figures."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def train_flops_per_step(cfg: TextDiffConfig, batch: int, seq_len: int) -> float:
    """6 N per token for the weight matmuls (head included, embedding lookup excluded) plus attention scores
    and values: 2 matmuls x 2 L d per token per layer forward, x3 for forward + backward."""
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * cfg.head_dim
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * cfg.intermediate_size  # q, o, k, v, gate, up, down
    n_matmul = layers * per_layer + d * cfg.vocab_size
    tokens = batch * seq_len
    return 6 * n_matmul * tokens + 3 * layers * 4 * seq_len * d * tokens


def build_variants(cfg_kwargs: dict, batch: int, seq_len: int, mask_id: int):
    torch.manual_seed(0)
    masked = TextDiffModel(TextDiffConfig(**cfg_kwargs, attention_mode="bidirectional", mask_token_id=mask_id))
    ar = TextDiffModel(TextDiffConfig(**cfg_kwargs, attention_mode="causal", mask_token_id=mask_id))
    c = masked.config
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
            tie_word_embeddings=False, attn_implementation="sdpa",
        )
    )
    masked_objective = MaskedDiffusionObjective(mask_token_id=mask_id, antithetic=True)
    ar_objective = AutoregressiveObjective()

    def llama_loss(model, batch):
        return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss

    return {
        "masked diffusion (textdiff)": (masked, lambda m, b: masked_objective(m, b).loss),
        "AR (textdiff, causal)": (ar, lambda m, b: ar_objective(m, b).loss),
        "HF LlamaForCausalLM": (llama, llama_loss),
    }


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    cfg_kwargs = dict(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, max_position_embeddings=args.seq_len,
    )
    variants = build_variants(cfg_kwargs, args.batch, args.seq_len, mask_id=args.vocab_size - 1)
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, (m, _) in variants.items()}
    gen = torch.Generator().manual_seed(0)
    batches = [
        {"input_ids": torch.randint(0, args.vocab_size - 1, (args.batch, args.seq_len), generator=gen)}
        for _ in range(4)
    ]

    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_idx in range(args.warmup + args.rounds):
        for name, (model, loss_fn) in variants.items():
            batch = batches[round_idx % len(batches)]
            start = time.perf_counter()
            loss = loss_fn(model, batch)
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - start
            if round_idx >= args.warmup:
                times[name].append(elapsed)
        print(f"round {round_idx + 1}/{args.warmup + args.rounds}", file=sys.stderr)

    peak = matmul_peak_flops()
    flops = train_flops_per_step(variants["masked diffusion (textdiff)"][0].config, args.batch, args.seq_len)
    tokens = args.batch * args.seq_len
    rows = {}
    for name, ts in times.items():
        step = statistics.median(ts)
        rows[name] = {
            "median_step_s": step,
            "tokens_per_s": tokens / step,
            "achieved_flops": flops / step,
            "utilisation_of_matmul_peak": flops / step / peak,
            "step_times_s": ts,
        }
    hf = rows["HF LlamaForCausalLM"]["tokens_per_s"]
    for row in rows.values():
        row["tokens_per_s_vs_hf_llama"] = row["tokens_per_s"] / hf
    n_params = sum(p.numel() for p in variants["masked diffusion (textdiff)"][0].parameters())
    return {
        "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "model": {**cfg_kwargs, "parameters": n_params},
        "batch": args.batch,
        "seq_len": args.seq_len,
        "rounds": args.rounds,
        "train_flops_per_step": flops,
        "matmul_peak_flops": peak,
        "results": rows,
        "target": "masked-diffusion step >= 0.95x HF Llama tokens/s",
        "target_met": rows["masked diffusion (textdiff)"]["tokens_per_s_vs_hf_llama"] >= 0.95,
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    tps = [report["results"][n]["tokens_per_s"] for n in names]
    util = [100 * report["results"][n]["utilisation_of_matmul_peak"] for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    axes[0].barh(names, tps, color=["tab:blue", "tab:orange", "tab:gray"])
    axes[0].set_xlabel("training tokens / s (median step)")
    axes[0].set_xlim(0, 1.35 * max(tps))
    for i, v in enumerate(tps):
        axes[0].text(v, i, f" {v:,.0f} ({v / tps[-1]:.2f}x)", va="center")
    axes[1].barh(names, util, color=["tab:blue", "tab:orange", "tab:gray"])
    axes[1].set_xlabel("% of measured fp32 matmul peak")
    axes[1].set_yticks([])
    m = report["model"]
    fig.suptitle(
        f"train step throughput, {m['parameters'] / 1e6:.1f}M params, batch {report['batch']} x {report['seq_len']}"
        f" ({report['machine']['threads']} threads)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "train_throughput"))
    args = p.parse_args()
    report = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(report, out.with_suffix(".png"))
    for name, row in report["results"].items():
        print(f"{name:<30} {row['tokens_per_s']:>10,.0f} tok/s  {row['tokens_per_s_vs_hf_llama']:.3f}x HF  "
              f"{100 * row['utilisation_of_matmul_peak']:.1f}% of peak")
    print(f"matmul peak {report['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; target met: {report['target_met']}")


if __name__ == "__main__":
    main()
