"""Text corpora as `datasets.Dataset` train/valid splits with a deterministic per-document split.

Three kinds of source, all ending in the same `CorpusSplits` (columns "doc_id", "text"):
- "stdlib": the CPython standard library source of the running interpreter (code, offline, real);
- local files (.txt/.text, .jsonl/.json, .parquet, or a directory of them), read by `datasets`' own
  "text" / "json" / "parquet" builders;
- anything else: a `datasets` Hub name (only usable online or when already cached).

A document goes to valid iff the hash of its doc_id falls below `valid_percent`: the split never
depends on file order, on the machine, or on what else is in the corpus.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".text")
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
_BUILDER_BY_SUFFIX = {
    **{s: "text" for s in TEXT_SUFFIXES},
    **{s: "json" for s in JSON_SUFFIXES},
    **{s: "parquet" for s in PARQUET_SUFFIXES},
}
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
_HUB_VALID_SPLITS = ("validation", "valid", "test")


@dataclass
class CorpusSplits:
    """Train/valid splits of one corpus; both datasets have "doc_id" and "text" columns."""

    train: datasets.Dataset
    """Training documents."""
    valid: datasets.Dataset
    """Held-out documents (disjoint from train by doc_id)."""
    meta: dict = field(default_factory=dict)
    """Provenance: name, content_hash (first 16 hex chars of a sha256), document and character counts."""


def is_valid_doc(doc_id: str, valid_percent: float) -> bool:
    """True iff `doc_id` belongs to the validation split (stable hash, independent of corpus order)."""
    bucket = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big") % 10000
    return bucket < valid_percent * 100


def load_corpus(
    source: str | list[str], *, text_field: str = "text", valid_percent: float = 2.0
) -> CorpusSplits:
    """Load a corpus ("stdlib", local file(s)/directory, or a `datasets` Hub name) as train/valid splits."""
    if not 0.0 <= valid_percent <= 100.0:
        raise ValueError(f"valid_percent must be in [0, 100], got {valid_percent}")
    if isinstance(source, (list, tuple)):
        return _load_local([Path(p) for p in source], text_field=text_field, valid_percent=valid_percent)
    if source == "stdlib":
        return _load_stdlib(valid_percent)
    if _looks_like_path(source):
        return _load_local([Path(source)], text_field=text_field, valid_percent=valid_percent)
    return _load_hub(source, text_field=text_field, valid_percent=valid_percent)


# ---------------------------------------------------------------------------------------------- stdlib
def stdlib_documents(root: str | Path | None = None) -> Iterator[tuple[str, str]]:
    """Yield (relative path, source) for the stdlib's non-test `*.py` files, sorted by path."""
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in _STDLIB_SKIP_DIRS for part in rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            # A handful of files are deliberately not UTF-8 (encoding tests); skipping is documented behaviour.
            logger.debug("skipping non-UTF-8 or unreadable stdlib file %s", rel)
            continue
        yield rel.as_posix(), text


def _load_stdlib(valid_percent: float) -> CorpusSplits:
    root = sysconfig.get_paths()["stdlib"]
    doc_ids, texts = [], []
    for doc_id, text in stdlib_documents(root):
        doc_ids.append(doc_id)
        texts.append(text)
    if not doc_ids:
        raise ValueError(f"no stdlib *.py files found under {root}")
    full = datasets.Dataset.from_dict({"doc_id": doc_ids, "text": texts})
    meta = {"name": "stdlib", "python_version": platform.python_version(), "root": root}
    return _split(full, valid_percent, meta)


# ---------------------------------------------------------------------------------------------- local files
def _looks_like_path(source: str) -> bool:
    # Hub names ("user/name") also contain "/", so only treat a string as a path when it exists or
    # unmistakably looks like one; a missing path then fails with FileNotFoundError, not a Hub error.
    return (
        os.path.exists(source)
        or source.startswith(("/", "./", "../", "~"))
        or source.lower().endswith(tuple(_BUILDER_BY_SUFFIX))
    )


def _expand_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        path = path.expanduser()
        if not path.exists():
            raise FileNotFoundError(f"corpus path not found: {path}")
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _BUILDER_BY_SUFFIX
            )
            if not found:
                raise FileNotFoundError(
                    f"no corpus files ({', '.join(sorted(_BUILDER_BY_SUFFIX))}) under directory {path}"
                )
            files.extend(found)
        elif path.suffix.lower() not in _BUILDER_BY_SUFFIX:
            raise ValueError(
                f"unsupported corpus file type {path.suffix!r} for {path}; expected one of "
                f"{', '.join(sorted(_BUILDER_BY_SUFFIX))}"
            )
        else:
            files.append(path)
    return files


def _load_local(paths: list[Path], *, text_field: str, valid_percent: float) -> CorpusSplits:
    if not paths:
        raise ValueError("load_corpus got an empty list of paths")
    files = _expand_files(paths)
    parts: list[datasets.Dataset] = []

    # 1. Plain-text files: one `datasets` call for all of them; "document" mode yields one row per file, in order.
    text_files = [f for f in files if _BUILDER_BY_SUFFIX[f.suffix.lower()] == "text"]
    if text_files:
        ds = _read_files("text", text_files, sample_by="document")
        if len(ds) != len(text_files):
            raise RuntimeError(f"expected one document per text file ({len(text_files)}), got {len(ds)} rows")
        parts.append(ds.add_column("doc_id", [str(f) for f in text_files]).select_columns(["doc_id", "text"]))

    # 2. Record files: one call per file so every row keeps its file in its doc_id.
    for f in files:
        builder = _BUILDER_BY_SUFFIX[f.suffix.lower()]
        if builder == "text":
            continue
        if f.stat().st_size == 0:
            raise ValueError(f"corpus file {f} is empty: it holds no records")
        ds = _read_files(builder, [f])
        parts.append(_as_documents(ds, text_field, id_prefix=f"{f}:", origin=f))

    full = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    meta = {"name": _local_name(paths), "files": [str(f) for f in files]}
    return _split(full, valid_percent, meta)


_UNREADABLE = {"text": "is not UTF-8 text (a binary file?)", "json": "is not valid JSON lines",
               "parquet": "is not a readable parquet file"}


def _read_files(builder: str, files: list[Path], **options) -> datasets.Dataset:
    """`datasets.load_dataset(builder, data_files=files)`; a file it cannot parse is a ValueError that names the
    file and the parser's complaint (not a DatasetGenerationError from deep inside `datasets`)."""
    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **options)
    except (datasets.exceptions.DatasetsError, StopIteration, ValueError, OSError) as err:
        culprit = next((f for f in files if builder == "text" and not _is_utf8(f)), files[0])
        named = str(culprit) if len(files) == 1 or builder == "text" else ", ".join(map(str, files))
        raise ValueError(f"corpus file {named} {_UNREADABLE[builder]}: {_root_cause(err)}") from err


def _is_utf8(path: Path) -> bool:
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _root_cause(err: BaseException) -> str:
    """First line of the first exception of the chain raised outside `datasets` (what the parser itself said)."""
    while type(err).__module__.startswith("datasets") and (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _as_documents(
    ds: datasets.Dataset, text_field: str, *, id_prefix: str, origin: object
) -> datasets.Dataset:
    """Keep only `text_field` (renamed "text") plus a "doc_id" column of `id_prefix` + row index."""
    if text_field not in ds.column_names:
        raise ValueError(f"text_field {text_field!r} not found in {origin}; columns found: {ds.column_names}")
    feature = ds.features[text_field]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise ValueError(f"column {text_field!r} in {origin} must hold strings, found {feature}")
    # Nulls inside a string column are caught per document by `_scan`.
    ds = ds.select_columns([text_field])
    if text_field != "text":
        ds = ds.rename_column(text_field, "text")
    doc_ids = [f"{id_prefix}{i}" for i in range(len(ds))]
    return ds.add_column("doc_id", doc_ids).select_columns(["doc_id", "text"])


def _local_name(paths: list[Path]) -> str:
    return paths[0].name if len(paths) == 1 else f"{paths[0].name}+{len(paths) - 1}"


# ---------------------------------------------------------------------------------------------- hub
def _load_hub(source: str, *, text_field: str, valid_percent: float) -> CorpusSplits:
    try:
        dsd = datasets.load_dataset(source)
    except (ConnectionError, FileNotFoundError) as err:
        datasets_offline = os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0")
        offline = datasets.config.HF_HUB_OFFLINE or datasets_offline
        hint = " (offline mode: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)" if offline else ""
        raise ValueError(
            f"corpus source {source!r} is neither a local path nor an available `datasets` dataset{hint}: {err}"
        ) from err
    if "train" not in dsd:
        raise ValueError(f"dataset {source!r} has no 'train' split; splits found: {list(dsd)}")

    meta = {"name": source}
    valid_split = next((s for s in _HUB_VALID_SPLITS if s in dsd), None)
    train = _as_documents(dsd["train"], text_field, id_prefix=f"{source}:train:", origin=f"{source}[train]")
    if valid_split is None:
        return _split(train, valid_percent, meta)
    # The dataset's own held-out split wins over the hash split: it is what published numbers use.
    valid = _as_documents(
        dsd[valid_split], text_field, id_prefix=f"{source}:{valid_split}:", origin=f"{source}[{valid_split}]"
    )
    meta["valid_split"] = valid_split
    return _finish(train, valid, meta)


# ---------------------------------------------------------------------------------------------- shared
def _split(full: datasets.Dataset, valid_percent: float, meta: dict) -> CorpusSplits:
    doc_ids = full["doc_id"]
    valid_idx = [i for i, d in enumerate(doc_ids) if is_valid_doc(d, valid_percent)]
    valid_set = set(valid_idx)
    train_idx = [i for i in range(len(doc_ids)) if i not in valid_set]
    meta = {**meta, "valid_percent": valid_percent}
    return _finish(full.select(train_idx), full.select(valid_idx), meta)


def _finish(train: datasets.Dataset, valid: datasets.Dataset, meta: dict) -> CorpusSplits:
    if len(train) + len(valid) == 0:
        raise ValueError(f"corpus {_describe(meta)} holds no documents")
    n_chars_train, train_leaves = _scan(train)
    n_chars_valid, valid_leaves = _scan(valid)
    meta = {
        **meta,
        "content_hash": content_hash(train_leaves + valid_leaves),
        "n_docs": len(train) + len(valid),
        "n_train_docs": len(train),
        "n_valid_docs": len(valid),
        "n_chars_train": n_chars_train,
        "n_chars_valid": n_chars_valid,
    }
    logger.info(
        "corpus %s: %d train / %d valid docs, %.2f / %.2f M chars, hash %s",
        meta["name"],
        len(train),
        len(valid),
        n_chars_train / 1e6,
        n_chars_valid / 1e6,
        meta["content_hash"],
    )
    return CorpusSplits(train=train, valid=valid, meta=meta)


def _scan(ds: datasets.Dataset) -> tuple[int, list[tuple[str, bytes]]]:
    """Character count and per-document (doc_id, sha256(text)) leaves, streamed in batches."""
    n_chars, leaves = 0, []
    for batch in ds.iter(batch_size=1000):
        for doc_id, text in zip(batch["doc_id"], batch["text"]):
            if text is None:
                raise ValueError(f"document {doc_id} has no text (null value)")
            n_chars += len(text)
            leaves.append((doc_id, hashlib.sha256(text.encode("utf-8")).digest()))
    return n_chars, leaves


def _describe(meta: dict) -> str:
    files = meta.get("files") or []
    return ", ".join(files) if 0 < len(files) <= 3 else repr(meta.get("name", "?"))


def check_training_splits(meta: dict, train_rows: int, valid_rows: int, seq_len: int) -> None:
    """Raise a ValueError naming the corpus (its `CorpusSplits.meta`) when, packed into `seq_len`-token rows, its
    train split fills no row or its valid split is empty: training would fail later, far from the cause."""
    corpus = _describe(meta)
    if train_rows == 0:
        counted = "n_train_docs" in meta  # a streamed corpus is not counted up front
        size = f" ({meta['n_train_docs']} documents, {meta.get('n_chars_train', 0)} characters)" if counted else ""
        raise ValueError(
            f"corpus {corpus} is too short to train on: its train split{size} does not fill one "
            f"data.seq_len={seq_len}-token sequence; add text or lower data.seq_len"
        )
    if valid_rows == 0:
        raise ValueError(
            f"corpus {corpus} has an empty validation split: {meta.get('n_valid_docs', 0)} of its "
            f"{meta.get('n_docs', 0)} documents hash into it (data.valid_percent={meta.get('valid_percent')}), "
            f"too few for one {seq_len}-token sequence; add documents (each .txt file is one document, each "
            ".jsonl line one) or raise data.valid_percent"
        )


def content_hash(leaves: Iterable[tuple[str, bytes]]) -> str:
    """First 16 hex chars of sha256 over (doc_id, sha256(text)) pairs sorted by doc_id.

    Hashing each text first keeps memory at one digest per document; sorting makes the hash
    independent of file and row order, so it identifies the content, not how it was listed.
    """
    h = hashlib.sha256()
    for doc_id, text_digest in sorted(leaves):
        encoded = doc_id.encode("utf-8")
        h.update(len(encoded).to_bytes(8, "big"))  # length prefix: no two pair lists serialise alike
        h.update(encoded)
        h.update(text_digest)
    return h.hexdigest()[:16]
