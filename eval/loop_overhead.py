"""Loop overhead: `textdiff.generate` (low-confidence, step per token) vs the plain LLaDA loop
(`llada_reference_generate` in eval/parallel_decoding.py) on the same model and prompt, round-robin in one run,
asserting the same tokens on every repeat.

    python eval/loop_overhead.py          # writes eval/results/loop_overhead.{json,md}

Speed does not depend on what the weights know, so the models are seeded random inits of the benchmark sizes: the
arithmetic benchmark trunk (hidden 192, 4 layers) and the digit_shift one (hidden 64, 2 layers), each at
generation length 32 (one block of 8 ... 4 blocks) with a 6-token prompt and at length 256 (blocks of 32) with a
213-token prompt (the digit_shift prompt length).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from parallel_decoding import llada_reference_generate  # noqa: E402

from textdiff import TextDiffConfig, TextDiffModel, generate  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SIZES = {"hidden 192 x 4 layers": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
         "hidden 64 x 2 layers": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)}
CASES = [dict(prompt=6, gen_length=32, block_length=8), dict(prompt=213, gen_length=256, block_length=32)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=20, help="round-robin rounds per case (length 256: a quarter)")
    p.add_argument("--out", default=str(RESULTS / "loop_overhead"))
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    for size, dims in SIZES.items():
        model = TextDiffModel(TextDiffConfig(vocab_size=300, max_position_embeddings=512, mask_token_id=1,
                                             **dims)).eval()
        for case in CASES:
            prompt = torch.randint(2, 300, (1, case["prompt"]))
            kw = dict(gen_length=case["gen_length"], steps=case["gen_length"], block_length=case["block_length"])
            times = {"reference": 0.0, "textdiff.generate": 0.0}
            rounds = args.repeats if case["gen_length"] <= 32 else max(1, args.repeats // 4)
            for r in range(rounds):
                order = ["reference", "textdiff.generate"][:: 1 if r % 2 == 0 else -1]  # alternate who goes first
                seqs = {}
                for name in order:
                    start = time.perf_counter()
                    if name == "reference":
                        seqs[name] = llada_reference_generate(model, prompt, mask_id=1, **kw)
                    else:
                        seqs[name] = generate(model, prompt, **kw).sequences
                    times[name] += time.perf_counter() - start
                if not torch.equal(seqs["reference"], seqs["textdiff.generate"]):
                    raise AssertionError(f"{size}, {case}: the loops gave different tokens")
            steps = rounds * case["gen_length"]
            rows.append({"model": size, **case, "rounds": rounds, "same_tokens": True,
                         "reference_ms_per_step": 1e3 * times["reference"] / steps,
                         "library_ms_per_step": 1e3 * times["textdiff.generate"] / steps,
                         "library_speed_vs_reference": times["reference"] / times["textdiff.generate"]})
            print(rows[-1], flush=True)
    report = {"command": "python " + " ".join(sys.argv), "threads": torch.get_num_threads(), "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = ["| model | prompt | gen length | block | reference ms/step | textdiff.generate ms/step | speed vs reference |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['prompt']} | {r['gen_length']} | {r['block_length']} | "
                     f"{r['reference_ms_per_step']:.3f} | {r['library_ms_per_step']:.3f} | "
                     f"{r['library_speed_vs_reference']:.3f}x |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
