"""Streamed corpora (`data.streaming`, textdiff.data.streaming + textdiff.train.streaming).

Fast tests, at the dataset level with rank / world_size and no processes: one epoch of the stream is exactly the
in-memory path's packed blocks; N ranks together cover every block of an epoch exactly once, and global step k
is the same blocks at any number of ranks; a stream restarted at a recorded block continues without repeating or
skipping one (also across world sizes and epochs); accelerate, given the split stream, would shard it again,
textdiff's loader does not; the trainer records the position and a resumed run trains exactly the remaining
batches on the same loss curve; the bad-input lines. Slow: torchrun with 2 gloo processes through the CLI trains
the same blocks, losses and weights as 1 process with twice the batch, across an epoch boundary, and its
checkpoint resumes in 1 process on the same curve.
"""

import json
import random
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch

from tests.conftest import tiny_config
from tests.train.test_distributed import COMMON, TINY_TEXT, launch
from tests.train.test_trainer import StopAt, losses
from textdiff.data import PackedCollator, load_corpus, pack_dataset, train_bpe_tokenizer
from textdiff.data.streaming import PackedStream, stream_corpus, take_blocks
from textdiff.modeling import TextDiffModel
from textdiff.objectives import MaskedDiffusionObjective

WORDS = ["alpha", "beta", "gamma", "delta", "def", "return", "import", "class", "self", "none", "for", "while", "if"]


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    """A directory of 3 .txt documents and a .jsonl of 1300 short records: more than one packing batch
    (PACK_BATCH_SIZE = 1000 documents), so the dropped tail of each batch must match too."""
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("stream_corpus")
    (root / "sub").mkdir()
    for i in range(3):
        (root / "sub" / f"doc{i}.txt").write_text(_text(rng, 200))
    (root / "records.jsonl").write_text("".join(json.dumps({"text": _text(rng, rng.randint(2, 30))}) + "\n"
                                                for _ in range(1300)))
    return root


@pytest.fixture(scope="module")
def tokenizer():
    datasets.disable_progress_bars()
    return train_bpe_tokenizer([_text(random.Random(1), 400)], vocab_size=300)


def _blocks(rows) -> list[tuple[int, ...]]:
    return [tuple(ids) for ids in rows]


@pytest.fixture(scope="module")
def small_stream(tmp_path_factory, tokenizer) -> PackedStream:
    """40 documents packed into 8-token blocks: an epoch of some 100 blocks, short enough to stream past its end."""
    rng = random.Random(2)
    path = tmp_path_factory.mktemp("small") / "small.jsonl"
    path.write_text("".join(json.dumps({"text": _text(rng, 12)}) + "\n" for _ in range(40)))
    return PackedStream(stream_corpus(str(path), valid_percent=0.0).train, tokenizer, 8)


def _rank_rows(stream, rank, world, batch, steps, start=0):
    """The first `steps` batches of one rank (lists of blocks)."""
    rows = stream.for_rank(rank, world, batch, start_block=start)
    return [_blocks(row["input_ids"]) for row, _ in zip(rows, range(steps))]


def _global_steps(stream, world, batch, steps, start=0):
    """Step k's global batch: the ranks' k-th batches in rank order."""
    per_rank = [_rank_rows(stream, r, world, batch, steps, start) for r in range(world)]
    return [[block for r in range(world) for block in per_rank[r][k]] for k in range(steps)]


# ---------------------------------------------------------------------------------------------- the blocks


@pytest.mark.parametrize("source", ["records.jsonl", "."], ids=["jsonl-file", "directory-txt-and-jsonl"])
def test_one_epoch_streams_exactly_the_blocks_of_the_in_memory_path(corpus_dir, tokenizer, source):
    path = str(corpus_dir / source)
    in_memory, streamed = load_corpus(path, valid_percent=5.0), stream_corpus(path, valid_percent=5.0)
    expected = pack_dataset(in_memory.train, tokenizer, 16)["input_ids"]
    got = [row["input_ids"] for row in PackedStream(streamed.train, tokenizer, 16)]
    assert len(expected) > 1000 and got == expected  # same blocks, same order
    valid = pack_dataset(in_memory.valid, tokenizer, 16)["input_ids"]
    assert take_blocks(PackedStream(streamed.valid, tokenizer, 16), 10)["input_ids"] == valid[:10]
    assert take_blocks(PackedStream(streamed.valid, tokenizer, 16), None)["input_ids"] == valid


@pytest.mark.parametrize(("world", "batch"), [(2, 1), (2, 3), (3, 2)])
def test_ranks_cover_every_block_of_an_epoch_exactly_once(corpus_dir, tokenizer, world, batch):
    stream = PackedStream(stream_corpus(str(corpus_dir)).train, tokenizer, 16)
    epoch = _blocks(row["input_ids"] for row in stream)
    per_rank = [[_blocks(row["input_ids"]) for row in stream.for_rank(r, world, batch, num_epochs=1)]
                for r in range(world)]
    flat = [block for rows in per_rank for row in rows for block in row]
    assert len(flat) == len(epoch) and Counter(flat) == Counter(epoch)
    # by position: group g of `batch` consecutive blocks is rank g mod world's (g // world)-th batch
    groups = [epoch[i:i + batch] for i in range(0, len(epoch), batch)]
    for g, group in enumerate(groups):
        assert per_rank[g % world][g // world] == group


def test_a_global_step_is_the_same_blocks_at_any_world_size_and_the_stream_wraps_into_the_next_epoch(small_stream):
    epoch = _blocks(row["input_ids"] for row in small_stream)
    steps = len(epoch) // 4 + 3  # past the end of the first epoch
    two = _global_steps(small_stream, 2, 2, steps)
    one = _global_steps(small_stream, 1, 4, steps)
    assert two == one
    endless = [block for step in one for block in step]
    assert endless == (epoch * 2)[:4 * steps]


@pytest.mark.parametrize(("before", "after"), [((2, 2), (2, 2)), ((2, 2), (1, 4)), ((1, 4), (2, 2))],
                         ids=["same-world", "2-ranks-to-1", "1-rank-to-2"])
@pytest.mark.parametrize("done", [3, 27], ids=["in-epoch-1", "in-epoch-2"])
def test_a_restarted_stream_continues_without_repeating_or_skipping_a_block(small_stream, before, after, done):
    """`done` steps of global batch 4 were trained; the resumed stream starts at block 4 * done (what the
    checkpoint records) and its steps are the uninterrupted run's next ones."""
    uninterrupted = _global_steps(small_stream, *before, done + 4)
    resumed = _global_steps(small_stream, *after, 4, start=4 * done)
    assert resumed == uninterrupted[done:]


def test_accelerate_would_shard_a_split_stream_again(small_stream):
    """Why textdiff's train loader bypasses accelerate's sharding: Trainer's stock path, given rank 0's stream split
    by `split_dataset_by_node`, prepares it for 2 processes (`prepare_data_loader`, here dispatch_batches=False:
    IterableDatasetShard) and keeps only half of the blocks of rank 0's own shard."""
    from accelerate.data_loader import prepare_data_loader
    from datasets.distributed import split_dataset_by_node
    from torch.utils.data import DataLoader

    rank0 = split_dataset_by_node(small_stream.epoch(), rank=0, world_size=2)
    own = _blocks(row["input_ids"] for row in rank0)
    loader = prepare_data_loader(DataLoader(rank0, batch_size=2, collate_fn=PackedCollator()), num_processes=2,
                                 process_index=0, put_on_device=False, dispatch_batches=False)
    seen = [tuple(ids.tolist()) for batch in loader for ids in batch["input_ids"]]
    assert len(own) > 8 and set(seen) < set(own) and len(seen) <= len(own) // 2 + 2  # half never trained


# ---------------------------------------------------------------------------------------------- the trainer


class _Recording:
    """The objective, recording the blocks each training step saw."""

    def __init__(self, objective):
        self.objective, self.seen = objective, []

    def __getattr__(self, name):
        return getattr(self.objective, name)

    def __call__(self, model, inputs, **kwargs):
        if model.training:
            self.seen.append(_blocks(inputs["input_ids"].tolist()))
        return self.objective(model, inputs, **kwargs)


def _stream_trainer(stream, tokenizer, out, *, max_steps, save_steps=None, callbacks=None):
    from transformers import TrainingArguments

    from textdiff.train.trainer import DiffusionTrainer

    torch.manual_seed(0)
    model = TextDiffModel(tiny_config(vocab_size=len(tokenizer) + 1, mask_token_id=len(tokenizer))).train()
    args = TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=3e-3, logging_steps=1,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 1, report_to=[], seed=0,
        remove_unused_columns=False, label_names=[], use_cpu=True, disable_tqdm=True, ignore_data_skip=True,
        lr_scheduler_type="constant",
    )
    objective = _Recording(MaskedDiffusionObjective(mask_token_id=len(tokenizer), antithetic=True))
    valid = take_blocks(stream, 4)
    return DiffusionTrainer(model=model, args=args, train_dataset=stream, eval_dataset=valid,
                            data_collator=PackedCollator(), objective=objective, elbo_samples=1, callbacks=callbacks)


def test_a_resumed_streaming_run_trains_the_remaining_batches_on_the_same_loss_curve(small_stream, tokenizer, tmp_path):
    epoch = _blocks(row["input_ids"] for row in small_stream)
    steps = len(epoch) // 4 + 2  # the resumed part crosses the epoch end
    full = _stream_trainer(small_stream, tokenizer, tmp_path / "full", max_steps=steps)
    full.train()
    assert [b for step in full.objective.seen for b in step] == (epoch * 2)[:4 * steps]
    assert full.stream_results() == {"stream_blocks_consumed": 4 * steps}

    cut_at = steps - 4
    cut = _stream_trainer(small_stream, tokenizer, tmp_path / "cut", max_steps=steps, save_steps=cut_at,
                          callbacks=[StopAt(cut_at)])
    cut.train()
    state = torch.load(tmp_path / "cut" / f"checkpoint-{cut_at}" / "textdiff_trainer_state.pt", weights_only=True)
    assert state == {"stream_blocks_consumed": 4 * cut_at, "global_step": cut_at,
                     "stream_identity": small_stream.identity}

    torch.manual_seed(999)  # the resumed run restores the saved RNG state
    resumed = _stream_trainer(small_stream, tokenizer, tmp_path / "cut", max_steps=steps, save_steps=cut_at)
    resumed.train(resume_from_checkpoint="latest")
    assert resumed.objective.seen == full.objective.seen[cut_at:]  # nothing repeated, nothing skipped
    got, expected = losses(resumed.state.log_history), losses(full.state.log_history)
    assert [got[s] for s in range(cut_at + 1, steps + 1)] == pytest.approx(
        [expected[s] for s in range(cut_at + 1, steps + 1)], rel=1e-6)
    assert resumed.stream_results() == {"stream_blocks_consumed": 4 * steps}

    # the same position in a stream packed another way would point at other blocks: refused in one line
    other = PackedStream(small_stream.documents, tokenizer, 6)
    moved = _stream_trainer(other, tokenizer, tmp_path / "cut", max_steps=steps + 2, save_steps=cut_at)
    with pytest.raises(ValueError, match=r"the stream changed \(seq_len 8 -> 6\)"):
        moved.train(resume_from_checkpoint=str(tmp_path / "cut" / f"checkpoint-{cut_at}"))


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("overrides", "expect"), [
    (["trainer.max_steps=null"], "data.streaming=true needs trainer.max_steps: a streamed corpus has no length"),
    (["data.task=arithmetic"], "data.streaming streams a text corpus"),
    (["data.corpus=someone/hub-corpus"], "data.streaming reads 'stdlib' or local"),
])
def test_streaming_bad_input_is_one_line(overrides, expect, tmp_path, capsys):
    from textdiff.cli import main

    rc = main(["train", "recipes/masked/stdlib_pretrain.yaml", f"run.output_dir={tmp_path / 'out'}",
               "data.streaming=true", *overrides])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("textdiff train: error: ")]
    assert rc == 2 and "Traceback" not in err
    assert len(lines) == 1 and expect in lines[0], err


def test_bad_records_met_by_the_stream_name_the_file(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": "cut short\n')
    with pytest.raises(ValueError, match=r"corpus file .*broken.jsonl is not valid JSON lines"):
        list(stream_corpus(str(broken), valid_percent=0.0).train)
    other = tmp_path / "other.jsonl"
    other.write_text('{"body": "no text field"}\n')
    with pytest.raises(ValueError, match=r"text_field 'text' not found in .*other.jsonl; columns found: \['body'\]"):
        list(stream_corpus(str(other), valid_percent=0.0).train)
    with pytest.raises(FileNotFoundError, match="corpus path not found"):
        stream_corpus(str(tmp_path / "missing.jsonl"))


def test_a_checkpoint_without_a_stream_position_is_refused(small_stream, tokenizer, tmp_path):
    trainer = _stream_trainer(small_stream, tokenizer, tmp_path, max_steps=2)
    trainer._stream_resuming = True  # as train(resume_from_checkpoint=...) of a checkpoint with no position
    with pytest.raises(ValueError, match="records no stream position.*resume it with data.streaming=false"):
        trainer.get_train_dataloader()


# ---------------------------------------------------------------------------------------------- torchrun (slow)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    rng = random.Random(3)
    path = tmp_path_factory.mktemp("small_corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": _text(rng, 30)}) + "\n" for _ in range(40)))
    return path


def _stream_run(corpus, out, nproc, batch, extra):
    from safetensors.torch import load_file

    launch(nproc, ["recipes/masked/stdlib_pretrain.yaml", *TINY_TEXT, *COMMON, f"data.corpus={corpus}",
                   "data.streaming=true", "trainer.lr_scheduler_type=constant", f"trainer.per_device_train_batch_size={batch}",
                   f"run.output_dir={out}", *extra])
    results = json.loads((out / "results.json").read_text())
    return results, load_file(out / "final" / "model.safetensors")


def _run_losses(results):
    return [h["loss"] for h in results["log_history"] if "loss" in h]


@pytest.mark.slow
def test_two_processes_stream_the_blocks_of_one_process_with_twice_the_batch(small_corpus, tmp_path):
    """Through the CLI: 2 ranks x batch 2 train the same blocks (same losses, same weights) as 1 process x 4,
    whose loader is the plain stream; 16 steps x 4 blocks run past the end of the 59-block epoch."""
    two, w_two = _stream_run(small_corpus, tmp_path / "two", 2, 2, ["trainer.max_steps=16"])
    one, w_one = _stream_run(small_corpus, tmp_path / "one", 1, 4, ["trainer.max_steps=16"])
    assert (two["world_size"], two["effective_batch_size"], two["engine"]) == (2, 4, "DistributedDataParallel")
    assert two["stream_blocks_consumed"] == one["stream_blocks_consumed"] == 64
    assert _run_losses(two) == pytest.approx(_run_losses(one), rel=1e-5)
    for key in w_one:
        torch.testing.assert_close(w_two[key], w_one[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_two_process_streaming_checkpoint_resumes_in_one_process_on_the_same_curve(small_corpus, tmp_path):
    """6 steps in 2 processes, then 12 more in 1 (past the epoch end) = 18 uninterrupted steps in 2 processes."""
    whole, w_whole = _stream_run(small_corpus, tmp_path / "whole", 2, 2, ["trainer.max_steps=18"])
    _stream_run(small_corpus, tmp_path / "mixed", 2, 2, ["trainer.max_steps=6", "trainer.save_steps=6"])
    resumed, w_resumed = _stream_run(small_corpus, tmp_path / "mixed", 1, 4, [
        "trainer.max_steps=18", "trainer.save_steps=6", "trainer.resume_from_checkpoint=latest"])
    assert resumed["world_size"] == 1 and resumed["stream_blocks_consumed"] == 72
    assert _run_losses(resumed)[-12:] == pytest.approx(_run_losses(whole)[-12:], rel=1e-5)
    for key in w_whole:
        torch.testing.assert_close(w_resumed[key], w_whole[key], rtol=1e-4, atol=1e-5)
