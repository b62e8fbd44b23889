"""Peak memory and step time of one training step with and without trunk gradient checkpointing, on CPU.

python eval/gradient_checkpointing_memory.py   -> eval/results/gradient_checkpointing_memory.{json,png}
Each setting runs in a fresh subprocess; peak memory is the process's max RSS (ru_maxrss) minus its RSS before the
step (model and batch already built), so it is the step's activations + gradients.
"""

import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, torch
from textdiff.modeling import TextDiffConfig, TextDiffModel
torch.set_num_threads(1); torch.manual_seed(0)
ckpt = sys.argv[1] == "1"
cfg = TextDiffConfig(vocab_size=2048, hidden_size=256, num_hidden_layers=8, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=1024, max_position_embeddings=256)
model = TextDiffModel(cfg).train()
if ckpt:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
ids = torch.randint(0, 2048, (16, 256))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
loss = torch.nn.functional.cross_entropy(model(ids).logits.transpose(1, 2), ids)
loss.backward()
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"gradient_checkpointing": ckpt, "step_peak_mib": (peak - before) / 1024, "step_s": seconds}))
"""


def main() -> None:
    rows = []
    for ckpt in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", CHILD, ckpt], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {"command": "python eval/gradient_checkpointing_memory.py", "device": "cpu, 1 thread",
              "model": "TextDiffModel hidden 256, 8 layers, vocab 2048", "batch": "16 x 256 tokens", "runs": rows}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "gradient_checkpointing_memory.json").write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    labels = ["off", "on"]
    axes[0].bar(labels, [r["step_peak_mib"] for r in rows])
    axes[0].set_title("step peak memory (MiB)")
    axes[1].bar(labels, [r["step_s"] for r in rows])
    axes[1].set_title("step time (s)")
    fig.suptitle("trunk gradient checkpointing, CPU")
    fig.tight_layout()
    fig.savefig(out / "gradient_checkpointing_memory.png", dpi=100)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
