"""Turn text into model batches: fixed-length packing for pretraining, prompt/answer batches for SFT."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import datasets
import torch
from transformers import PreTrainedTokenizerBase

PACK_BATCH_SIZE = 1000  # documents per `map` batch; the remainder of each batch (< seq_len tokens) is dropped


def pack_dataset(
    ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, seq_len: int, *, num_proc: int | None = None
) -> datasets.Dataset:
    """Tokenize documents, append eos to each, concatenate and cut into rows of exactly `seq_len` ids.

    Runs through `Dataset.map(batched=True)`, so results are cached like any `datasets` transform.
    Concatenation happens within each map batch of PACK_BATCH_SIZE documents (as in HF `run_clm`):
    the tail of every batch that does not fill a whole row is dropped.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if tokenizer.eos_token_id is None:
        raise ValueError("pack_dataset needs a tokenizer with an eos token to separate documents")
    if "text" not in ds.column_names:
        raise ValueError(f"pack_dataset needs a 'text' column; columns found: {ds.column_names}")
    # int32 halves the cache size; vocabularies here are far below 2**31.
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))})
    return ds.map(
        partial(_pack_batch, tokenizer=tokenizer, seq_len=seq_len),
        batched=True,
        batch_size=PACK_BATCH_SIZE,
        remove_columns=ds.column_names,
        features=features,
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        desc=f"packing into {seq_len}-token rows",
    )


def _pack_batch(
    batch: dict[str, list], *, tokenizer: PreTrainedTokenizerBase, seq_len: int
) -> dict[str, list]:
    # verbose=False: documents are longer than model_max_length by design; they are cut below, not truncated.
    encoded = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
    stream: list[int] = []
    for ids in encoded:
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
    n_rows = len(stream) // seq_len
    return {"input_ids": [stream[i * seq_len : (i + 1) * seq_len] for i in range(n_rows)]}


@dataclass
class PackedCollator:
    """Stack pre-packed `input_ids` rows into a batch; every position is attended."""

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [torch.as_tensor(ex["input_ids"], dtype=torch.long) for ex in examples]
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            raise ValueError(f"PackedCollator needs equal-length rows, got lengths {sorted(lengths)}")
        input_ids = torch.stack(rows)  # [B, L]
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


@dataclass
class SFTCollator:
    """Prompt/answer examples -> LLaDA-style SFT batch (right-padded with eos; pads count as answer)."""

    tokenizer: PreTrainedTokenizerBase
    """Tokenizer with an eos token; its chat template (if any) formats the prompt."""
    max_length: int
    """Longest allowed prompt + answer + eos; longer examples raise instead of being truncated."""
    pad_to: int | None = None
    """Pad every batch to this length (fixed shapes); None pads to the longest example in the batch."""
    answer_length: int | None = None
    """EOS-pad every answer to exactly this many tokens: the generation canvas the model will decode on (prompt +
    `gen_length` masks). Rows whose prompts are shorter than the batch's longest are then right-padded with
    attention-masked padding, so each row's visible length is its prompt + answer_length, as at decoding time."""
    use_chat_template: bool | None = None
    """None: use the chat template when the tokenizer has one; True: require it; False: raw prompt text."""

    def __post_init__(self) -> None:
        if self.tokenizer.eos_token_id is None:
            raise ValueError("SFTCollator needs a tokenizer with an eos token (answers end with eos)")
        if self.pad_to is not None and self.pad_to > self.max_length:
            raise ValueError(f"pad_to {self.pad_to} is larger than max_length {self.max_length}")
        if self.answer_length is not None and self.pad_to is not None:
            raise ValueError("set either pad_to (a fixed sequence length) or answer_length (a fixed answer canvas), not both")
        if self.answer_length is not None and self.answer_length < 1:
            raise ValueError(f"answer_length must be >= 1, got {self.answer_length}")
        if self.use_chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("use_chat_template=True but the tokenizer has no chat_template")

    def _chat(self) -> bool:
        if self.use_chat_template is False:
            return False
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_prompt(self, prompt: str) -> list[int]:
        """Prompt ids: the chat-formatted user turn (with generation prompt) or the raw prompt text."""
        if self._chat():
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            # The rendered template already holds its special tokens (bos, role markers) as text.
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("SFTCollator got an empty batch")
        eos = self.tokenizer.eos_token_id
        # 1. tokenize prompt and answer (+ eos) per example
        sequences, prompt_lens = [], []
        for i, ex in enumerate(examples):
            prompt_ids = self.encode_prompt(ex["prompt"])
            answer_ids = self.tokenizer(ex["answer"], add_special_tokens=False)["input_ids"] + [eos]
            if self.answer_length is not None:
                if len(answer_ids) > self.answer_length:
                    raise ValueError(
                        f"example {i}: answer has {len(answer_ids)} tokens incl. eos, more than answer_length "
                        f"{self.answer_length} (the generation canvas); raise it"
                    )
                answer_ids += [eos] * (self.answer_length - len(answer_ids))
            n = len(prompt_ids) + len(answer_ids)
            if n > self.max_length:
                raise ValueError(
                    f"example {i} has {n} tokens (prompt {len(prompt_ids)} + answer {len(answer_ids)} incl. eos), "
                    f"more than max_length {self.max_length}"
                )
            sequences.append(prompt_ids + answer_ids)
            prompt_lens.append(len(prompt_ids))

        # 2. right-pad with eos: in LLaDA SFT these pads are answer tokens, visible and trained
        length = self.pad_to if self.pad_to is not None else max(len(s) for s in sequences)
        too_long = [(i, len(s)) for i, s in enumerate(sequences) if len(s) > length]
        if too_long:
            i, n = too_long[0]
            raise ValueError(f"example {i} has {n} tokens, more than pad_to {length}")
        input_ids = torch.full((len(sequences), length), eos, dtype=torch.long)  # [B, L]
        for row, seq in enumerate(sequences):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)

        # 3. masks: prompt positions are never noised; answer length counts the eos pads
        prompt_len = torch.tensor(prompt_lens, dtype=torch.long)  # [B]
        prompt_mask = torch.arange(length)[None, :] < prompt_len[:, None]  # [B, L]
        if self.answer_length is None:
            attention_mask = torch.ones_like(input_ids)  # [B, L]: every eos pad is a visible, trained answer token
            answer_lengths = length - prompt_len  # [B]
        else:
            # each row ends at prompt + answer_length; what follows only aligns the batch and is never seen
            seq_len = torch.tensor([len(s) for s in sequences], dtype=torch.long)  # [B]
            attention_mask = (torch.arange(length)[None, :] < seq_len[:, None]).long()  # [B, L]
            answer_lengths = torch.full_like(prompt_len, self.answer_length)  # [B]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "prompt_mask": prompt_mask,
            "answer_lengths": answer_lengths,
        }
