"""Corpus diversity of generated text: distinct-n, self-BLEU and within-text repetition rate.

Texts are split on whitespace unless a `tokenizer` (any callable str -> list of tokens) is given.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

Tokenize = Callable[[str], Sequence]

BLEU_MAX_ORDER = 4
BLEU_SMOOTHING_EPSILON = 0.1
"""Smoothing of self-BLEU: an n-gram order with no match counts `epsilon` matches instead of 0 (Chen & Cherry
2014 method 1, nltk's `SmoothingFunction().method1`); an order the hypothesis is too short for counts
`epsilon / 1`."""


def _tokens(text: str, tokenizer: Tokenize | None) -> list:
    if not isinstance(text, str):
        raise TypeError(f"texts must be strings, got {type(text).__name__}")
    return list(tokenizer(text)) if tokenizer is not None else text.split()


def ngrams(tokens: Sequence, n: int) -> list[tuple]:
    """All contiguous n-grams of `tokens`, in order (with repeats)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int, tokenizer: Tokenize | None = None) -> float:
    """Unique n-grams / all n-grams, pooled over the whole corpus (Li et al. 2016)."""
    grams = [g for text in texts for g in ngrams(_tokens(text, tokenizer), n)]
    if not grams:
        raise ValueError(f"distinct_n: the texts hold no {n}-gram (every text is shorter than {n} tokens)")
    return len(set(grams)) / len(grams)


def repetition_rate(texts: Sequence[str], n: int = 4, tokenizer: Tokenize | None = None) -> float:
    """Mean over texts of the fraction of a text's n-grams that repeat an earlier n-gram of the same text
    (1 - unique/total). Texts shorter than n tokens have no n-gram and are left out of the mean."""
    rates = []
    for text in texts:
        grams = ngrams(_tokens(text, tokenizer), n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    if not rates:
        raise ValueError(f"repetition_rate: no text has {n} tokens or more")
    return sum(rates) / len(rates)


def sentence_bleu(hypothesis: Sequence, references: Sequence[Sequence], max_order: int = BLEU_MAX_ORDER) -> float:
    """Sentence BLEU (uniform weights up to `max_order`) of token lists: clipped n-gram precisions against the
    max count over references, brevity penalty against the closest reference length (ties: the shorter),
    smoothed as `BLEU_SMOOTHING_EPSILON` says."""
    if not references:
        raise ValueError("sentence_bleu needs at least one reference")
    if not hypothesis:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_order + 1):
        hyp = Counter(ngrams(hypothesis, n))
        max_ref: Counter = Counter()
        for ref in references:
            for gram, count in Counter(ngrams(ref, n)).items():
                max_ref[gram] = max(max_ref[gram], count)
        matches = sum(min(count, max_ref[gram]) for gram, count in hyp.items())
        total = sum(hyp.values())
        log_precision += math.log((matches or BLEU_SMOOTHING_EPSILON) / max(total, 1)) / max_order
    hyp_len = len(hypothesis)
    ref_len = min((len(r) for r in references), key=lambda length: (abs(length - hyp_len), length))
    brevity = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def self_bleu(texts: Sequence[str], tokenizer: Tokenize | None = None, max_order: int = BLEU_MAX_ORDER) -> float:
    """Mean BLEU-4 of each text against all the other texts as references (Zhu et al. 2018, Texygen);
    higher means less diverse."""
    if len(texts) < 2:
        raise ValueError(f"self_bleu needs at least 2 texts, got {len(texts)}")
    tokens = [_tokens(text, tokenizer) for text in texts]
    scores = [sentence_bleu(hyp, tokens[:i] + tokens[i + 1 :], max_order) for i, hyp in enumerate(tokens)]
    return sum(scores) / len(scores)
