"""Data: corpora (train/valid splits), tokenizers, collators, and synthetic verifiable tasks."""

from textdiff.data.collators import PackedCollator, SFTCollator, pack_dataset
from textdiff.data.corpora import CorpusSplits, is_valid_doc, load_corpus
from textdiff.data.tokenizers import MASK_TOKEN, ensure_mask_token, load_tokenizer, train_bpe_tokenizer

__all__ = [
    "MASK_TOKEN",
    "CorpusSplits",
    "PackedCollator",
    "SFTCollator",
    "ensure_mask_token",
    "is_valid_doc",
    "load_corpus",
    "load_tokenizer",
    "pack_dataset",
    "train_bpe_tokenizer",
]
