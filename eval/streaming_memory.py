"""Peak memory and time of preparing a corpus for training, in memory (data.streaming=false) and streamed (true).

python eval/streaming_memory.py   -> eval/results/streaming_memory.json
For each corpus size a synthetic .jsonl (seeded draws of the words of the CPython stdlib source) is written once;
each setting runs in a fresh subprocess with its own empty `datasets` cache and the GPT-2 tokenizer (no BPE
training), and measures the process's max RSS (ru_maxrss) minus its RSS once the tokenizer is loaded: in memory, building the
data (read, split, tokenise and pack everything; the text column is read into a list on the way); streamed,
building the data (the valid blocks) and then streaming the first 4000 training blocks (250 steps of batch 16).
Also the disk the `datasets` cache took (arrow copies of the corpus and of its packed blocks, in memory mode).
"""

import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES_MB = (8, 32, 128)
STREAMED_BLOCKS = 4000

CHILD = r"""
import json, os, resource, sys, time
corpus, streaming, out = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
os.environ["HF_DATASETS_CACHE"] = os.path.join(out, "datasets_cache")
import datasets
datasets.disable_progress_bars()
from textdiff.config import load_recipe
from textdiff.data import load_tokenizer
from textdiff.families.text import build_text_data
load_tokenizer("gpt2")
recipe = load_recipe("recipes/masked/stdlib_pretrain.yaml", [f"data.corpus={corpus}", f"data.streaming={streaming}",
                     "tokenizer.name=gpt2", "data.seq_len=128", f"run.output_dir={out}/run"])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
tokenizer, train, valid, collator, meta = build_text_data(recipe, None)
build_s = time.perf_counter() - start
blocks = len(train) if not streaming else None
if streaming:
    rows = train.for_rank(0, 1, 16)
    blocks = sum(len(row["input_ids"]) for row, _ in zip(rows, range(STREAMED // 16)))
total_s = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cache = sum(f.stat().st_size for f in __import__("pathlib").Path(os.environ["HF_DATASETS_CACHE"]).rglob("*") if f.is_file())
print(json.dumps({"streaming": streaming, "peak_mib": (peak - before) / 1024, "build_s": build_s, "total_s": total_s,
                  "train_blocks_read": blocks, "valid_blocks": len(valid), "datasets_cache_mib": cache / 2**20}))
""".replace("STREAMED", str(STREAMED_BLOCKS))


def write_corpus(path: Path, megabytes: int) -> None:
    from textdiff.data.corpora import stdlib_documents

    words = sorted({word for _, text in stdlib_documents() for word in text.split()})
    rng = random.Random(0)
    with open(path, "w") as f:
        written = 0
        while written < megabytes * 2**20:
            line = json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(100, 400)))}) + "\n"
            f.write(line)
            written += len(line)


def main() -> None:
    rows = []
    root = Path(__file__).parents[1]
    with tempfile.TemporaryDirectory(prefix="textdiff_streaming_memory_") as tmp:
        for size in SIZES_MB:
            corpus = Path(tmp) / f"corpus_{size}mb.jsonl"
            write_corpus(corpus, size)
            for streaming in ("0", "1"):
                work = Path(tmp) / f"work_{size}_{streaming}"
                out = subprocess.run([sys.executable, "-c", CHILD, str(corpus), streaming, str(work)], cwd=root,
                                     capture_output=True, text=True, check=True)
                rows.append({"corpus_mb": size, **json.loads(out.stdout.strip().splitlines()[-1])})
                print(rows[-1], flush=True)
    result = {"command": "python eval/streaming_memory.py", "device": "cpu, 1 thread (shared 2-core machine)",
              "tokenizer": "gpt2", "seq_len": 128, "runs": rows}
    out_dir = root / "eval" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "streaming_memory.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
