import itertools

import datasets
import pytest
import torch

from textdiff.data import PackedCollator, SFTCollator, pack_dataset, train_bpe_tokenizer

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    texts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(40)) for i in range(200)]
    texts += ["Compute 12+34. Answer: 46", "x = [1, 2, 3]\nprint(x)\n"] * 20
    return train_bpe_tokenizer(texts, vocab_size=300)


def _docs(n: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "doc_id": [f"d{i}" for i in range(n)],
            "text": [" ".join(WORDS[: 3 + (i * 5) % 13]) + f" {i}" for i in range(n)],
        }
    )


# ---------------------------------------------------------------------------------------------- packing
def test_pack_dataset_is_the_eos_joined_stream_cut_into_rows(tok):
    ds = _docs(50)
    packed = pack_dataset(ds, tok, seq_len=16)
    assert packed.column_names == ["input_ids"]

    stream = []
    for text in ds["text"]:
        stream += tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n_rows = len(stream) // 16
    assert len(packed) == n_rows > 5
    rows = [list(r) for r in packed["input_ids"]]
    assert all(len(r) == 16 for r in rows)
    assert list(itertools.chain(*rows)) == stream[: n_rows * 16]  # order kept, only the tail dropped
    assert sum(r.count(tok.eos_token_id) for r in rows) >= 45  # documents stay separated by eos


def test_pack_dataset_multiprocess_matches_single(tok):
    ds = _docs(40)
    single = pack_dataset(ds, tok, seq_len=8)
    multi = pack_dataset(ds, tok, seq_len=8, num_proc=2)
    # Each worker packs its own shard, so rows can differ at shard borders; the tokens cannot.
    assert all(len(r) == 8 for r in multi["input_ids"])
    assert abs(len(multi) - len(single)) <= 1
    assert list(itertools.chain(*multi["input_ids"]))[:8] == list(single["input_ids"][0])


def test_pack_dataset_rejects_bad_input(tok):
    with pytest.raises(ValueError, match="seq_len"):
        pack_dataset(_docs(3), tok, seq_len=0)
    with pytest.raises(ValueError, match="'text' column"):
        pack_dataset(datasets.Dataset.from_dict({"body": ["x"]}), tok, seq_len=4)


def test_packed_collator_stacks_rows(tok):
    packed = pack_dataset(_docs(30), tok, seq_len=12)
    batch = PackedCollator()([packed[i] for i in range(4)])
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (4, 12)
    assert batch["input_ids"][2].tolist() == list(packed[2]["input_ids"])
    assert torch.equal(batch["attention_mask"], torch.ones(4, 12, dtype=torch.long))
    with pytest.raises(ValueError, match="equal-length"):
        PackedCollator()([{"input_ids": [1, 2]}, {"input_ids": [1, 2, 3]}])


# ---------------------------------------------------------------------------------------------- SFT
def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_sft_collator_layout_without_chat_template(tok):
    examples = [
        {"prompt": "Compute 12+34.", "answer": "46"},
        {"prompt": "the quick brown fox", "answer": "jumps over a lazy dog"},
    ]
    batch = SFTCollator(tok, max_length=64)(examples)
    eos = tok.eos_token_id
    seqs = [_ids(tok, e["prompt"]) + _ids(tok, e["answer"]) + [eos] for e in examples]
    length = max(len(s) for s in seqs)
    assert batch["input_ids"].shape == (2, length) and batch["input_ids"].dtype == torch.long
    for row, (ex, seq) in enumerate(zip(examples, seqs)):
        n_prompt = len(_ids(tok, ex["prompt"]))
        assert batch["input_ids"][row].tolist() == seq + [eos] * (length - len(seq))  # right-padded with eos
        assert batch["prompt_mask"][row].tolist() == [True] * n_prompt + [False] * (length - n_prompt)
        assert batch["answer_lengths"][row].item() == length - n_prompt  # eos pads count as answer
    assert batch["prompt_mask"].dtype == torch.bool and batch["answer_lengths"].dtype == torch.long
    assert torch.equal(batch["attention_mask"], torch.ones_like(batch["input_ids"]))


def test_sft_collator_pad_to_and_length_errors(tok):
    ex = [{"prompt": "Compute 12+34.", "answer": "46"}]
    n = len(_ids(tok, "Compute 12+34.")) + len(_ids(tok, "46")) + 1
    batch = SFTCollator(tok, max_length=40, pad_to=32)(ex)
    assert batch["input_ids"].shape == (1, 32) and batch["input_ids"][0, n:].eq(tok.eos_token_id).all()
    long_ex = ex + [{"prompt": "the quick brown fox " * 10, "answer": "dog"}]
    with pytest.raises(ValueError, match=r"example 1 has \d+ tokens.*max_length 20"):
        SFTCollator(tok, max_length=20)(long_ex)
    with pytest.raises(ValueError, match="pad_to 8"):
        SFTCollator(tok, max_length=40, pad_to=8)(
            ex + [{"prompt": "the quick brown fox jumps", "answer": "over"}]
        )
    with pytest.raises(ValueError, match="pad_to 50 is larger than max_length 40"):
        SFTCollator(tok, max_length=40, pad_to=50)


def test_sft_collator_answer_length_gives_every_row_the_decoding_canvas(tok):
    """answer_length G: row i is exactly prompt_i + G visible tokens (answer + eos pads), as generate() builds its
    canvas; what aligns the batch after that is attention-masked, so it is neither seen nor scored."""
    examples = [
        {"prompt": "Compute 7+8.", "answer": "15"},
        {"prompt": "the quick brown fox jumps", "answer": "over"},
    ]
    G, eos = 6, tok.eos_token_id
    batch = SFTCollator(tok, max_length=64, answer_length=G)(examples)
    prompts = [_ids(tok, e["prompt"]) for e in examples]
    length = max(len(p) for p in prompts) + G
    assert batch["input_ids"].shape == (2, length)
    for row, (ex, prompt) in enumerate(zip(examples, prompts)):
        answer = _ids(tok, ex["answer"]) + [eos]
        visible = len(prompt) + G
        assert batch["input_ids"][row, :visible].tolist() == prompt + answer + [eos] * (G - len(answer))
        assert batch["attention_mask"][row].tolist() == [1] * visible + [0] * (length - visible)
        assert batch["prompt_mask"][row, : len(prompt)].all() and not batch["prompt_mask"][row, len(prompt):].any()
    assert batch["answer_lengths"].tolist() == [G, G]
    with pytest.raises(ValueError, match=r"answer has \d+ tokens incl. eos, more than answer_length 2"):
        SFTCollator(tok, max_length=64, answer_length=2)([{"prompt": "Compute 7+8.", "answer": "1 5"}])
    with pytest.raises(ValueError, match="either pad_to"):
        SFTCollator(tok, max_length=64, pad_to=32, answer_length=8)


def test_sft_collator_uses_chat_template_when_present(tok):
    chat_tok = train_bpe_tokenizer(
        ["<|user|>hello\n<|assistant|>hi"] * 50 + [" ".join(WORDS)] * 50, vocab_size=290
    )
    chat_tok.chat_template = CHAT_TEMPLATE
    ex = [{"prompt": "the quick fox", "answer": "a lazy dog"}]
    rendered = "<|user|>the quick fox\n<|assistant|>"
    batch = SFTCollator(chat_tok, max_length=64)(ex)
    n_prompt = len(_ids(chat_tok, rendered))
    assert batch["input_ids"][0, :n_prompt].tolist() == _ids(chat_tok, rendered)
    assert batch["prompt_mask"][0].sum().item() == n_prompt
    assert chat_tok.decode(batch["input_ids"][0]) == rendered + "a lazy dog<|endoftext|>"

    raw = SFTCollator(chat_tok, max_length=64, use_chat_template=False)(ex)
    assert raw["prompt_mask"][0].sum().item() == len(_ids(chat_tok, "the quick fox"))
    with pytest.raises(ValueError, match="no chat_template"):
        SFTCollator(tok, max_length=64, use_chat_template=True)
