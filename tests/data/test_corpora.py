import hashlib
import json
import sysconfig
from pathlib import Path

import datasets
import pytest

from textdiff.data import CorpusSplits, is_valid_doc, load_corpus
from textdiff.data.corpora import stdlib_documents


def _bucket(doc_id: str) -> int:
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") % 10000


# ---------------------------------------------------------------------------------------------- is_valid_doc
def test_is_valid_doc_matches_the_documented_formula():
    ids = [f"doc/{i}" for i in range(3000)]
    for doc_id in ids:
        assert is_valid_doc(doc_id, 2.0) == (_bucket(doc_id) < 200)
        assert is_valid_doc(doc_id, 12.5) == (_bucket(doc_id) < 1250)


def test_is_valid_doc_boundary_is_exclusive():
    on_boundary = next(d for d in (f"b{i}" for i in range(10**6)) if _bucket(d) == 200)
    assert not is_valid_doc(on_boundary, 2.0)
    assert is_valid_doc(on_boundary, 2.01)


def test_is_valid_doc_fraction_monotonicity_and_bounds():
    ids = [f"file_{i}.py" for i in range(20000)]
    valid2 = {d for d in ids if is_valid_doc(d, 2.0)}
    valid10 = {d for d in ids if is_valid_doc(d, 10.0)}
    assert 0.015 < len(valid2) / len(ids) < 0.025
    assert 0.09 < len(valid10) / len(ids) < 0.11
    assert valid2 <= valid10  # growing valid_percent only moves documents train -> valid
    assert not any(is_valid_doc(d, 0.0) for d in ids[:500])
    assert all(is_valid_doc(d, 100.0) for d in ids[:500])


# ---------------------------------------------------------------------------------------------- stdlib
@pytest.fixture(scope="module")
def stdlib_corpus() -> CorpusSplits:
    return load_corpus("stdlib")


def test_stdlib_corpus_contents_and_split(stdlib_corpus):
    train, valid, meta = stdlib_corpus.train, stdlib_corpus.valid, stdlib_corpus.meta
    assert isinstance(train, datasets.Dataset) and set(train.column_names) == {"doc_id", "text"}
    assert set(valid.column_names) == {"doc_id", "text"}
    train_ids, valid_ids = list(train["doc_id"]), list(valid["doc_id"])
    assert not set(train_ids) & set(valid_ids)
    assert all(is_valid_doc(d, 2.0) for d in valid_ids) and not any(is_valid_doc(d, 2.0) for d in train_ids)

    all_ids = set(train_ids) | set(valid_ids)
    assert "argparse.py" in all_ids and "asyncio/base_events.py" in all_ids
    for doc_id in all_ids:
        parts = doc_id.split("/")
        assert doc_id.endswith(".py") and not parts[-1].startswith("test_")
        assert not {"test", "tests", "idle_test", "site-packages"} & set(parts[:-1]), doc_id

    root = Path(sysconfig.get_paths()["stdlib"])
    row = train_ids.index("argparse.py")
    assert train[row]["text"] == (root / "argparse.py").read_text(encoding="utf-8")

    assert meta["name"] == "stdlib" and meta["n_docs"] == len(all_ids) > 300
    assert meta["n_train_docs"] == len(train) and meta["n_valid_docs"] == len(valid) > 0
    assert meta["n_chars_train"] == sum(len(t) for t in train["text"])
    assert meta["n_chars_valid"] == sum(len(t) for t in valid["text"])
    assert len(meta["content_hash"]) == 16 and meta["python_version"].count(".") == 2


def test_stdlib_documents_filters_a_fake_tree(tmp_path):
    for rel in [
        "a.py",
        "pkg/b.py",
        "pkg/test_c.py",
        "test/d.py",
        "pkg/tests/e.py",
        "idlelib/idle_test/f.py",
        "site-packages/g.py",
        "notes.txt",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n")
    (tmp_path / "latin1.py").write_bytes(b"# caf\xe9\n")
    docs = dict(stdlib_documents(tmp_path))
    assert sorted(docs) == ["a.py", "pkg/b.py"]
    assert docs["pkg/b.py"] == "# pkg/b.py\n"


def test_stdlib_corpus_is_deterministic(stdlib_corpus):
    again = load_corpus("stdlib")
    assert again.meta == stdlib_corpus.meta
    assert list(again.valid["doc_id"]) == list(stdlib_corpus.valid["doc_id"])


# ---------------------------------------------------------------------------------------------- local files
def _write_txt_dir(root: Path, n: int = 60) -> dict[str, str]:
    texts = {}
    for i in range(n):
        path = root / f"sub{i % 3}" / f"doc{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        texts[str(path)] = f"document {i}\n\nsecond paragraph of {i}\n"
        path.write_text(texts[str(path)])
    return texts


def test_local_text_directory_one_document_per_file(tmp_path):
    texts = _write_txt_dir(tmp_path / "corpus")
    (tmp_path / "corpus" / "ignored.csv").write_text("a,b\n")
    splits = load_corpus(str(tmp_path / "corpus"), valid_percent=20.0)
    got = dict(zip(splits.train["doc_id"], splits.train["text"])) | dict(
        zip(splits.valid["doc_id"], splits.valid["text"])
    )
    assert got == texts  # whole file per row, paragraphs kept, csv ignored
    assert set(splits.valid["doc_id"]) == {d for d in texts if is_valid_doc(d, 20.0)}
    assert 0 < len(splits.valid) < len(texts)
    assert splits.meta["n_docs"] == 60 and len(splits.meta["files"]) == 60


def test_local_jsonl_custom_field_and_parquet(tmp_path):
    jsonl = tmp_path / "data.jsonl"
    rows = [{"body": f"row {i}", "other": i} for i in range(40)]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    splits = load_corpus(str(jsonl), text_field="body", valid_percent=25.0)
    docs = dict(zip(splits.train["doc_id"], splits.train["text"])) | dict(
        zip(splits.valid["doc_id"], splits.valid["text"])
    )
    assert docs == {f"{jsonl}:{i}": f"row {i}" for i in range(40)}
    assert set(splits.train.column_names) == {"doc_id", "text"}

    parquet = tmp_path / "data.parquet"
    datasets.Dataset.from_dict({"text": [f"pq {i}" for i in range(10)]}).to_parquet(str(parquet))
    txt = tmp_path / "note.txt"
    txt.write_text("a plain document")
    mixed = load_corpus([str(parquet), str(txt)])  # one list may mix builders
    docs = dict(zip(mixed.train["doc_id"], mixed.train["text"])) | dict(
        zip(mixed.valid["doc_id"], mixed.valid["text"])
    )
    assert docs == {**{f"{parquet}:{i}": f"pq {i}" for i in range(10)}, str(txt): "a plain document"}


def test_content_hash_tracks_content_not_listing_order(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("alpha")
    b.write_text("beta")
    h1 = load_corpus([str(a), str(b)]).meta["content_hash"]
    h2 = load_corpus([str(b), str(a)]).meta["content_hash"]
    b.write_text("beta!")
    h3 = load_corpus([str(a), str(b)]).meta["content_hash"]
    assert h1 == h2 and h1 != h3


def test_missing_path_and_missing_field_errors(tmp_path):
    missing = tmp_path / "nope" / "corpus.jsonl"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_corpus(str(missing))
    with pytest.raises(FileNotFoundError, match="nope"):
        load_corpus([str(tmp_path / "nope.txt")])

    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text(json.dumps({"content": "hi", "id": 1}) + "\n")
    with pytest.raises(ValueError, match=r"'text'.*content"):
        load_corpus(str(jsonl))


def test_unavailable_hub_name_offline_is_a_value_error(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    with pytest.raises(ValueError, match="neither a local path nor an available"):
        load_corpus("someone-who-does-not-exist/no-such-corpus")


def test_null_and_non_string_text_are_rejected(tmp_path):
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text('{"text": "ok"}\n{"text": null}\n')
    with pytest.raises(ValueError, match=r"nulls.jsonl:1 has no text"):
        load_corpus(str(nulls))
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text('{"text": 1}\n{"text": 2}\n')
    with pytest.raises(ValueError, match="must hold strings"):
        load_corpus(str(numbers))
