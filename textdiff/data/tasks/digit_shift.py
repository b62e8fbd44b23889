"""Digit shift: add a key to every digit of a long digit string, mod 10.

    "Shift each digit by 3 (mod 10): 40829..." -> "73152..."

The long-answer benchmark task of parallel decoding: with `n_digits=200` and digits split into single tokens the
answer is 200 tokens, and answer digit i depends only on the key and input digit i. Given the prompt the answer
tokens are therefore conditionally independent, the case parallel decoding is built for, while an AR model can
solve it just as well, one token at a time. Verified exactly (every digit); `score` gives per-digit credit.
"""

from __future__ import annotations

import random

from textdiff.data.tasks import Problem, Task

DEFAULT_PROMPT = "Shift each digit by {key} (mod 10): {digits}"


def shift_digits(digits: str, key: int) -> str:
    """Every digit d of `digits` replaced by (d + key) mod 10."""
    return "".join(str((int(d) + key) % 10) for d in digits)


def extract_digits(completion: str) -> str:
    """The answer's digit string: the completion with whitespace removed (any other character stays and fails)."""
    return "".join(completion.split())


class DigitShiftTask(Task):
    """`n_digits` random digits and a key in [`min_key`, `max_key`]; the answer shifts each digit by the key."""

    name = "digit_shift"

    def __init__(self, n_digits: int = 200, min_key: int = 1, max_key: int = 9,
                 prompt_template: str = DEFAULT_PROMPT) -> None:
        if n_digits < 1:
            raise ValueError(f"n_digits must be >= 1, got {n_digits}")
        if not 0 <= min_key <= max_key <= 9:
            raise ValueError(f"need 0 <= min_key <= max_key <= 9, got {min_key}, {max_key}")
        if "{key}" not in prompt_template or "{digits}" not in prompt_template:
            raise ValueError(f"prompt_template must contain {{key}} and {{digits}}, got {prompt_template!r}")
        self.n_digits = n_digits
        self.min_key, self.max_key = min_key, max_key
        self.prompt_template = prompt_template

    def sample(self, rng: random.Random) -> Problem:
        """One random problem; meta["key"] is "key:digits", which fixes its split."""
        key = rng.randint(self.min_key, self.max_key)
        digits = "".join(rng.choice("0123456789") for _ in range(self.n_digits))
        return Problem(
            prompt=self.prompt_template.format(key=key, digits=digits),
            answer=shift_digits(digits, key),
            meta={"key": f"{key}:{digits}", "shift": key, "digits": digits},
        )

    def score(self, problem: Problem, completion: str) -> float:
        """Fraction of the answer's digits right at their position (a wrong-length answer loses the missing
        or extra ones)."""
        got, want = extract_digits(completion), problem.answer
        right = sum(a == b for a, b in zip(got, want))
        return right / max(len(got), len(want))

    def verify(self, problem: Problem, completion: str) -> bool:
        """Exact: the completion (whitespace removed) is the shifted string, every digit."""
        return extract_digits(completion) == problem.answer
