"""Released diffusion LMs in textdiff, against their published code (tiny random configs, CPU, fp32): the largest
logit difference and the decoding agreement of every committed golden case, and Qwen3 against transformers.

    python eval/released_parity.py      # a few seconds; writes eval/results/released_parity.json

The goldens (tests/fixtures/released/) were computed once by tests/fixtures/make_released_golden.py with the
published modeling and generate code (dllm @ ca17675, ML-GSAI/LLaDA @ b7e6c35); this script needs none of it.
It measures nothing about real weights or speed: no GPU was lent to this work.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "eval" / "results"


def main() -> None:
    torch.set_num_threads(1)
    from tests.test_released_models import (
        ARCHS,
        _textdiff_options,
        convert,
        golden,
        make_qwen3,
        published_state,
        spec,
        swap_layers,
    )
    from textdiff import generate
    from textdiff.adapters import from_hf
    from textdiff.samplers.generate import generate_autoregressive

    report: dict = {
        "command": "python eval/released_parity.py",
        "machine": platform.platform(),
        "torch": torch.__version__,
        "dtype": "float32",
        "architectures": {},
    }
    for arch in ARCHS:
        g, model = golden(arch), convert(arch)
        ids, attention_mask = g["input_ids"], g["attention_mask"]
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0) if arch == "dream" else None
        swap = (1, 2) if arch == "llada_moe" else (0, 1)
        with torch.no_grad():
            plain = (model(ids).logits - g["logits"]).abs().max().item()
            padded = model(ids, attention_mask=attention_mask, position_ids=positions).logits
            padded = (padded - g["logits_padded"])[attention_mask.bool()].abs().max().item()
            swapped = convert(arch, swap_layers(published_state(arch), *swap))
            swapped = (swapped(ids).logits - g["logits"]).abs().max().item()
        cases = []
        for k, case in enumerate(spec(arch)["cases"]):
            out = generate(model, g["prompts"], **_textdiff_options(arch, case, g)).sequences
            ref = g[f"generated_{k}"]
            cases.append(
                {
                    **case,
                    "tokens_equal": bool(torch.equal(out, ref)),
                    "positions_differing": int((out != ref).sum()),
                    "positions": int(ref.numel()),
                }
            )
        report["architectures"][arch] = {
            "max_abs_logit_diff": plain,
            "max_abs_logit_diff_left_padded": padded,
            "max_abs_logit_diff_with_layers_swapped": swapped,
            "published": spec(arch)["published"],
            "generate_cases": cases,
        }
    hf = make_qwen3()
    model = from_hf(hf)
    x = torch.randint(0, 61, (2, 24), generator=torch.Generator().manual_seed(0))
    prompt = torch.randint(3, 61, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (model(x).logits - hf(x).logits).abs().max().item()
    ours = generate_autoregressive(model, prompt, gen_length=12).sequences
    theirs = hf.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    report["architectures"]["qwen3"] = {
        "max_abs_logit_diff": diff,
        "greedy_tokens_equal": bool(torch.equal(ours, theirs)),
        "reference": "transformers.Qwen3ForCausalLM (eager)",
    }
    report["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "released_parity.json").write_text(json.dumps(report, indent=1) + "\n")
    for arch, row in report["architectures"].items():
        agree = [c["tokens_equal"] for c in row.get("generate_cases", [])]
        print(
            f"{arch:10s} max|dlogit| {row['max_abs_logit_diff']:.2e}"
            + (
                f"  padded {row['max_abs_logit_diff_left_padded']:.2e}"
                f"  swapped {row['max_abs_logit_diff_with_layers_swapped']:.2f}"
                f"  generate {sum(agree)}/{len(agree)} cases equal"
                if agree
                else f"  greedy equal: {row['greedy_tokens_equal']}"
            )
        )


if __name__ == "__main__":
    main()
