"""Integer arithmetic: "Compute 37+485." -> "522"; verified on the final integer of the completion."""

from __future__ import annotations

import operator
import random
import re

from textdiff.data.tasks import Problem, Task

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_COMMUTATIVE = {"+", "*"}
# An optional minus counts as a sign only when it does not follow a word character or a closing
# bracket ("5-3" has the numbers 5 and 3, "= -2" has -2). Thousands separators are accepted.
_NUMBER_RE = re.compile(r"(?<![\w.])(?:(?<![\w)])-)?\d+(?:,\d{3})*(?:\.\d+)?")
_ANSWER_MARKER_RE = re.compile(r"answer\s*(?:is)?\s*:", re.IGNORECASE)


def extract_integer(completion: str) -> int | None:
    """The answer integer: the first number after the last "Answer:" marker, else the last number.

    A final number with a fractional part ("522.5") is not an integer answer and gives None.
    """
    markers = list(_ANSWER_MARKER_RE.finditer(completion))
    if markers:
        numbers = _NUMBER_RE.findall(completion[markers[-1].end() :])
        token = numbers[0] if numbers else None
    else:
        numbers = _NUMBER_RE.findall(completion)
        token = numbers[-1] if numbers else None
    if token is None or "." in token:
        return None
    return int(token.replace(",", ""))


class ArithmeticTask(Task):
    """Binary integer arithmetic with operands of `min_digits`..`max_digits` digits."""

    name = "arithmetic"

    def __init__(
        self, min_digits: int = 1, max_digits: int = 3, ops: tuple[str, ...] = ("+", "-", "*")
    ) -> None:
        if not 1 <= min_digits <= max_digits:
            raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
        unknown = set(ops) - set(_OPS)
        if unknown or not ops:
            raise ValueError(f"ops must be a non-empty subset of {sorted(_OPS)}, got {list(ops)}")
        self.min_digits = min_digits
        self.max_digits = max_digits
        self.ops = tuple(ops)

    def _operand(self, rng: random.Random) -> int:
        digits = rng.randint(self.min_digits, self.max_digits)
        low = 0 if digits == 1 else 10 ** (digits - 1)
        return rng.randint(low, 10**digits - 1)

    def sample(self, rng: random.Random) -> Problem:
        """One random problem; commutative ops share a key across operand order ("3+5" == "5+3")."""
        a, b = self._operand(rng), self._operand(rng)
        op = rng.choice(self.ops)
        # Canonical key: otherwise "485+37" in test would leak the fact "37+485" seen in train.
        key = f"{min(a, b)}{op}{max(a, b)}" if op in _COMMUTATIVE else f"{a}{op}{b}"
        result = _OPS[op](a, b)
        return Problem(
            prompt=f"Compute {a}{op}{b}.",
            answer=str(result),
            meta={"key": key, "a": a, "b": b, "op": op, "result": result},
        )

    def verify(self, problem: Problem, completion: str) -> bool:
        """Exact integer match of the extracted answer against the reference."""
        value = extract_integer(completion)
        return value is not None and value == int(problem.answer)
