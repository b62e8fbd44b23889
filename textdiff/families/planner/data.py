"""Paragraph data of the planner family: docstring paragraphs of the standard library (always there, offline) or
the blank-line separated paragraphs of local text files; tokenised rows and their collator.

A row is one paragraph, [bos] + tokens -> tokens + [eos] for the decoder, the tokens alone for the encoder, and its
first `prompt_tokens` tokens as the prompt the planner is conditioned on.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import torch

from textdiff.data.corpora import is_valid_doc, stdlib_documents

__all__ = ["ParagraphCollator", "docstring_paragraphs", "file_paragraphs", "load_paragraphs", "tokenize_paragraphs"]

_SPACE = re.compile(r"\s+")


def _paragraphs(text: str, min_words: int) -> list[str]:
    """Blank-line separated paragraphs of prose (whitespace joined), at least `min_words` words, without doctest
    or code-looking lines."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.strip().splitlines()]
        if not lines or any(line.startswith((">>>", "...", "$", "::", "-", "*", "=", "|", "+", ":")) for line in lines):
            continue
        para = _SPACE.sub(" ", " ".join(lines)).strip()
        if len(para.split()) >= min_words and para[0].isalpha():
            out.append(para)
    return out


@functools.lru_cache(maxsize=2)  # parsing every stdlib module takes ~10 s
def docstring_paragraphs(min_words: int = 8, root: str | None = None) -> tuple[tuple[str, str], ...]:
    """(id, paragraph) for the prose paragraphs of every docstring in the stdlib's non-test modules, in file order;
    duplicates are dropped (many modules share boilerplate)."""
    seen, out = set(), []
    for rel, source in stdlib_documents(root):
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                for para in _paragraphs(doc or "", min_words):
                    if para not in seen:
                        seen.add(para)
                        out.append((f"{rel}:{len(out)}", para))
    return tuple(out)


def file_paragraphs(paths: list[Path], min_words: int = 8) -> list[tuple[str, str]]:
    """(id, paragraph) of local UTF-8 text files (blank lines separate paragraphs)."""
    out = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"data.corpus: {path} is not a file")
        for para in _paragraphs(path.read_text(encoding="utf-8"), min_words):
            out.append((f"{path.name}:{len(out)}", para))
    return out


def load_paragraphs(corpus: str, valid_percent: float, min_words: int = 8) -> tuple[list[str], list[str], dict]:
    """(train paragraphs, valid paragraphs, meta): 'stdlib' = docstring paragraphs, else comma-separated text files;
    the split hashes the paragraph text (stable across runs and file order)."""
    if corpus == "stdlib":
        rows, name = docstring_paragraphs(min_words), "stdlib_docstrings"
    else:
        rows, name = file_paragraphs([Path(p.strip()) for p in corpus.split(",")], min_words), corpus
    train = [p for _, p in rows if not is_valid_doc(p, valid_percent)]
    valid = [p for _, p in rows if is_valid_doc(p, valid_percent)]
    if not train or not valid:
        raise ValueError(f"data.corpus {corpus!r}: {len(train)} train and {len(valid)} valid paragraphs of >= "
                         f"{min_words} words; need both (more text, or another data.valid_percent)")
    return train, valid, {"name": name, "paragraphs_train": len(train), "paragraphs_valid": len(valid)}


def tokenize_paragraphs(texts: list[str], tokenizer, max_tokens: int) -> list[dict]:
    """Rows {"input_ids": tokens (truncated to max_tokens)} of paragraphs (no special tokens)."""
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [{"input_ids": ids[:max_tokens]} for ids in encoded if ids]


class ParagraphCollator:
    """Rows of token ids -> the padded batch the planner objectives read:
    input_ids [B, L] / attention_mask [B, L]: the paragraph (encoder input, planner target);
    decoder_input_ids [B, L + 1] = [bos] + tokens, labels [B, L + 1] = tokens + [eos] (-100 on padding);
    prompt_ids [B, P] / prompt_mask [B, P]: the first `prompt_tokens` tokens (the planner's condition)."""

    def __init__(self, *, pad_token_id: int, bos_token_id: int, eos_token_id: int, prompt_tokens: int):
        self.pad, self.bos, self.eos, self.prompt_tokens = pad_token_id, bos_token_id, eos_token_id, prompt_tokens

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        B, L = len(rows), max(len(r["input_ids"]) for r in rows)
        P = min(self.prompt_tokens, L)
        batch = {
            "input_ids": torch.full((B, L), self.pad), "attention_mask": torch.zeros(B, L, dtype=torch.long),
            "decoder_input_ids": torch.full((B, L + 1), self.pad), "labels": torch.full((B, L + 1), -100),
            "prompt_ids": torch.full((B, P), self.pad), "prompt_mask": torch.zeros(B, P, dtype=torch.long),
        }
        for i, row in enumerate(rows):
            ids = torch.tensor(row["input_ids"])
            n, p = len(ids), min(P, len(ids))
            batch["input_ids"][i, :n], batch["attention_mask"][i, :n] = ids, 1
            batch["decoder_input_ids"][i, 0], batch["decoder_input_ids"][i, 1: n + 1] = self.bos, ids
            batch["labels"][i, :n], batch["labels"][i, n] = ids, self.eos
            batch["prompt_ids"][i, :p], batch["prompt_mask"][i, :p] = ids[:p], 1
        return batch
