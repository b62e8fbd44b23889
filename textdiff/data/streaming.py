"""Corpora streamed, never loaded: `data.streaming: true` reads the documents, tokenises and packs them on the fly
through `datasets` iterable datasets, so a corpus of any size trains in bounded memory.

Same data as the in-memory path: the documents come in the order `load_corpus` reads them, go to train or valid
by the same doc_id hash (`is_valid_doc`), and are packed by the same function in batches of PACK_BATCH_SIZE
documents, so one epoch of `PackedStream` yields exactly the blocks of `pack_dataset(load_corpus(...).train)`.

Ranks: `PackedStream.for_rank` cuts the endless stream of blocks (epoch after epoch) into groups of one per-rank
batch and gives group g to rank g mod world (`datasets.distributed.split_dataset_by_node`, strategy "examples").
Global step k is then blocks [k N b, (k+1) N b) for N ranks x batch b, the same blocks one process with batch N*b
trains on in step k: every block is trained once per epoch, on exactly one rank. The price: each rank reads and
tokenises the whole stream and keeps its 1/N (memory stays bounded; tokenising is small beside a training step).
Splitting by files instead (datasets' "shards" strategy) would pack each rank's files apart, giving other blocks
than one process and unequal counts per rank.

Resume: a run records how many blocks it consumed (`blocks_consumed`) and a resumed run starts the stream there
(`start_block`), whatever its number of ranks: no block repeated, none skipped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import torch
from datasets.distributed import split_dataset_by_node
from transformers import PreTrainedTokenizerBase

from textdiff.data.collators import PACK_BATCH_SIZE, _pack_batch
from textdiff.data.corpora import (
    _BUILDER_BY_SUFFIX,
    _UNREADABLE,
    _expand_files,
    _local_name,
    _looks_like_path,
    _root_cause,
    is_valid_doc,
    stdlib_documents,
)

BLOCK_FEATURES = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))})


@dataclass
class StreamedCorpus:
    """Train/valid documents of one corpus as `datasets.IterableDataset`s ("doc_id", "text"), read lazily."""

    train: datasets.IterableDataset
    """training documents, in corpus order."""
    valid: datasets.IterableDataset
    """held-out documents (the same doc_id hash split as `load_corpus`)."""
    meta: dict = field(default_factory=dict)
    """provenance: name, files, valid_percent, streaming (no counts or content hash: nothing is read up front)."""

    def train_texts(self) -> _Texts:
        """The train texts, re-iterable (a BPE tokenizer fingerprints them, then trains on them: two passes)."""
        return _Texts(self.train)


class _Texts:
    def __init__(self, documents: datasets.IterableDataset):
        self.documents = documents

    def __iter__(self) -> Iterator[str]:
        for doc in self.documents:
            yield doc["text"]


def stream_corpus(source: str | list[str], *, text_field: str = "text", valid_percent: float = 2.0) -> StreamedCorpus:
    """"stdlib" or local file(s) / directories as streamed train/valid documents. File names, types and emptiness
    are checked now; parse errors surface (naming the file) when the stream reaches them."""
    if not 0.0 <= valid_percent <= 100.0:
        raise ValueError(f"valid_percent must be in [0, 100], got {valid_percent}")
    if source == "stdlib":
        sources: tuple = ("stdlib",)
        meta: dict = {"name": "stdlib"}
    elif isinstance(source, (list, tuple)) or _looks_like_path(source):
        paths = [Path(p) for p in (source if isinstance(source, (list, tuple)) else [source])]
        if not paths:
            raise ValueError("stream_corpus got an empty list of paths")
        files = _expand_files(paths)
        for f in files:
            if _BUILDER_BY_SUFFIX[f.suffix.lower()] != "text" and f.stat().st_size == 0:
                raise ValueError(f"corpus file {f} is empty: it holds no records")
        sources = tuple(str(f) for f in files)
        meta = {"name": _local_name(paths), "files": list(sources)}
    else:
        raise ValueError(f"data.streaming reads 'stdlib' or local .txt/.jsonl/.parquet files; {source!r} is neither "
                         "(load a `datasets` Hub corpus with data.streaming=false)")
    meta.update(valid_percent=valid_percent, streaming=True)

    def split(name: str) -> datasets.IterableDataset:
        # a tuple, not a list: `datasets` would read a list in gen_kwargs as shards and could reorder them
        kwargs = {"sources": sources, "text_field": text_field, "split": name, "valid_percent": valid_percent}
        return datasets.IterableDataset.from_generator(_split_documents, gen_kwargs=kwargs)

    return StreamedCorpus(train=split("train"), valid=split("valid"), meta=meta)


def _split_documents(sources: tuple, text_field: str, split: str, valid_percent: float) -> Iterator[dict]:
    for doc_id, text in _documents(sources, text_field):
        if is_valid_doc(doc_id, valid_percent) == (split == "valid"):
            yield {"doc_id": doc_id, "text": text}


def _documents(sources: tuple, text_field: str) -> Iterator[tuple[str, str]]:
    """(doc_id, text) in `load_corpus` order: stdlib by path; else every text file (one document each), then the
    records of each .jsonl / .parquet file."""
    if sources == ("stdlib",):
        yield from stdlib_documents()
        return
    files = [Path(s) for s in sources]
    for f in files:
        if _BUILDER_BY_SUFFIX[f.suffix.lower()] == "text":
            for row in _read_stream("text", f, sample_by="document"):
                yield str(f), row["text"]
    for f in files:
        builder = _BUILDER_BY_SUFFIX[f.suffix.lower()]
        if builder == "text":
            continue
        for i, row in enumerate(_read_stream(builder, f)):
            if text_field not in row:
                raise ValueError(f"text_field {text_field!r} not found in {f}; columns found: {sorted(row)}")
            text = row[text_field]
            if text is None:
                raise ValueError(f"document {f}:{i} has no text (null value)")
            if not isinstance(text, str):  # bad data in a file: a ValueError, as load_corpus raises
                raise ValueError(  # noqa: TRY004
                    f"column {text_field!r} in {f} must hold strings, found {type(text).__name__}")
            yield f"{f}:{i}", text


def _read_stream(builder: str, path: Path, **options) -> Iterator[dict]:
    """Rows of one file through `datasets.load_dataset(builder, streaming=True)`; a file the parser cannot read is a
    ValueError naming it."""
    try:
        yield from datasets.load_dataset(builder, data_files=[str(path)], split="train", streaming=True, **options)
    except (datasets.exceptions.DatasetsError, ValueError, OSError, UnicodeDecodeError) as err:
        raise ValueError(f"corpus file {path} {_UNREADABLE[builder]}: {_root_cause(err)}") from err


class PackedStream(torch.utils.data.IterableDataset):
    """Documents tokenised and packed into `seq_len`-token blocks as they stream. Iterating it yields one epoch of
    blocks ({"input_ids": [seq_len ids]}); `for_rank` gives a training rank its batches of the endless stream."""

    def __init__(self, documents: datasets.IterableDataset, tokenizer: PreTrainedTokenizerBase, seq_len: int, *,
                 source: dict | None = None):
        """`source`: what identifies the documents (corpus files, split), recorded with a resume position."""
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if tokenizer.eos_token_id is None:
            raise ValueError("PackedStream needs a tokenizer with an eos token to separate documents")
        self.documents, self.tokenizer, self.seq_len = documents, tokenizer, seq_len
        vocab = json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8")
        self.identity = {**(source or {}), "seq_len": seq_len,
                         "tokenizer_sha256": hashlib.sha256(vocab).hexdigest()[:16]}
        """what a block position means: the same documents, packed the same way (compared on resume)."""

    def epoch(self) -> datasets.IterableDataset:
        """One pass over the blocks: `pack_dataset`'s packing (PACK_BATCH_SIZE documents per batch, the tail of each
        batch dropped) applied to the stream."""
        return self.documents.map(
            partial(_pack_batch, tokenizer=self.tokenizer, seq_len=self.seq_len), batched=True,
            batch_size=PACK_BATCH_SIZE, remove_columns=["doc_id", "text"], features=BLOCK_FEATURES,
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.epoch())

    def for_rank(self, rank: int, world_size: int, batch_size: int, *, start_block: int = 0,
                 num_epochs: int | None = None) -> datasets.IterableDataset:
        """Rank `rank`'s batches: each row is one batch ({"input_ids": [batch_size blocks]}), the global groups
        rank, rank + world_size, ... of `batch_size` consecutive blocks of the stream that starts at global block
        `start_block` and repeats the epoch `num_epochs` times (None: without end, training stops at max_steps).
        A batch is one row because `split_dataset_by_node` keeps 1 of every world_size rows of the final
        pipeline: anything mapped after it (an unbatching) would be split row by row instead."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if batch_size < 1 or start_block < 0:
            raise ValueError(f"batch_size must be >= 1 and start_block >= 0, got {batch_size} and {start_block}")
        blocks = self.epoch().repeat(num_epochs)
        if start_block:
            blocks = blocks.skip(start_block)  # re-reads and re-packs the skipped blocks; trains none of them
        return split_dataset_by_node(blocks.batch(batch_size), rank=rank, world_size=world_size, strategy="examples")

    def has_block(self) -> bool:
        """True iff the stream packs at least one block (reads only as far as the first one)."""
        return next(iter(self.epoch()), None) is not None


def take_blocks(stream: PackedStream, limit: int | None) -> datasets.Dataset:
    """The first `limit` blocks (None: all) of one epoch, in memory: the validation split of a streamed corpus
    (the first blocks of `pack_dataset(valid)`, as the in-memory path's max_valid_blocks keeps)."""
    blocks = stream.epoch() if limit is None else stream.epoch().take(limit)
    return datasets.Dataset.from_dict({"input_ids": [row["input_ids"] for row in blocks]}, features=BLOCK_FEATURES)


@dataclass
class BatchCollator:
    """Collate one streamed row holding a whole batch of blocks with the per-example `collator`."""

    collator: Any
    """the collator of a list of {"input_ids": ...} examples (PackedCollator)."""

    def __call__(self, row: dict[str, list]) -> dict[str, torch.Tensor]:
        return self.collator([{"input_ids": ids} for ids in row["input_ids"]])
