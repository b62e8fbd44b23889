"""Countdown: combine the given numbers with + - * / into an equation equal to the target.

Targets come from a random expression tree over the numbers, so every instance is solvable.
Completions are parsed with `ast` and evaluated over exact fractions; only numbers, the four
operators and parentheses are accepted, so no completion text is ever executed.
"""

from __future__ import annotations

import ast
import itertools
import operator
import random
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

from textdiff.data.tasks import Problem, Task

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3
_AST_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_INT_OPS = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.floordiv,
}  # "/" only when exact
_MAX_EQUATION_CHARS = 200  # longer "equations" are not answers; also bounds parse cost
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_MARKER_RE = re.compile(r"answer\s*:", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\boxed\{(.*)\}", re.DOTALL)
_UNICODE_OPS = str.maketrans({"×": "*", "÷": "/", "−": "-"})

FORMAT_SCORE = 0.1  # d1: a well-formed equation that is wrong still earns this much
DEFAULT_PROMPT = (
    "Using the numbers {numbers}, create an equation that equals {target}. "
    "You can use {ops}, and each number must be used exactly once."
)
"""d1-style prompt; `{numbers}` renders as a list ("[3, 5, 7]"), `{ops}` as "+, -, * and /"."""


def _ops_text(ops: tuple[str, ...]) -> str:
    return ops[0] if len(ops) == 1 else ", ".join(ops[:-1]) + f" and {ops[-1]}"


@dataclass
class _Node:
    value: int
    text: str
    precedence: int


def _combine(left: _Node, op: str, right: _Node) -> _Node:
    # Minimal parentheses: a right operand of equal precedence needs them under - and /.
    p = _PRECEDENCE[op]
    left_text = f"({left.text})" if left.precedence < p else left.text
    needs = right.precedence < p or (right.precedence == p and op in "-/")
    right_text = f"({right.text})" if needs else right.text
    return _Node(_INT_OPS[op](left.value, right.value), f"{left_text}{op}{right_text}", p)


def extract_equation(completion: str) -> str | None:
    """The candidate equation: last <answer>..</answer>, else after the last "Answer:", else the last line."""
    tags = _ANSWER_TAG_RE.findall(completion)
    if tags:
        text = tags[-1]
    else:
        markers = list(_ANSWER_MARKER_RE.finditer(completion))
        if markers:
            text = completion[markers[-1].end() :].strip().split("\n")[0]
        else:
            lines = [line for line in completion.strip().split("\n") if line.strip()]
            if not lines:
                return None
            text = lines[-1]
    boxed = _BOXED_RE.search(text)
    if boxed:
        text = boxed.group(1)
    # A trailing "= 56" restates the target; the left-hand side is the equation that gets checked.
    text = text.translate(_UNICODE_OPS).split("=")[0].strip().rstrip(".").strip()
    return text or None


def parse_equation(text: str) -> tuple[Fraction | None, list[int]] | None:
    """Exact value and integer literals of an arithmetic expression; None if it is not one.

    Only int literals, + - * / and parentheses are accepted (no unary minus, names, calls, powers),
    so nothing in `text` is ever executed. The value is None when the expression divides by zero.
    """
    if len(text) > _MAX_EQUATION_CHARS:
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    literals: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
            return _AST_OPS[type(node.op)](walk(node.left), walk(node.right))  # Fraction: exact division
        if isinstance(node, ast.Constant) and type(node.value) is int:
            literals.append(node.value)
            return Fraction(node.value)
        raise _Rejected(type(node).__name__)

    try:
        return walk(tree.body), literals
    except (_Rejected, RecursionError):
        return None
    except ZeroDivisionError:
        # Well-formed but meaningless: callers score it like a wrong value. Collect all literals first.
        literals.clear()
        _collect_literals(tree.body, literals)
        return None, literals


def _collect_literals(node: ast.AST, out: list[int]) -> None:
    if isinstance(node, ast.BinOp):
        _collect_literals(node.left, out)
        _collect_literals(node.right, out)
    elif isinstance(node, ast.Constant):
        out.append(node.value)


class _Rejected(Exception):
    """An AST node outside the allowed grammar."""


class CountdownTask(Task):
    """Reach a target from `n_numbers` numbers in [min_number, max_number], each used exactly once."""

    name = "countdown"

    def __init__(
        self,
        n_numbers: int = 3,
        min_number: int = 1,
        max_number: int = 100,
        max_target: int = 1000,
        ops: tuple[str, ...] = ("+", "-", "*", "/"),
        prompt_template: str = DEFAULT_PROMPT,
    ) -> None:
        if n_numbers < 2:
            raise ValueError(f"n_numbers must be >= 2, got {n_numbers}")
        if not 1 <= min_number <= max_number:
            raise ValueError(f"need 1 <= min_number <= max_number, got {min_number}, {max_number}")
        if max_target < 1:
            raise ValueError(f"max_target must be >= 1, got {max_target}")
        unknown = set(ops) - set(_PRECEDENCE)
        if unknown or "+" not in ops:
            # "+" is always applicable, which guarantees every tree can be completed.
            raise ValueError(f"ops must be a subset of {sorted(_PRECEDENCE)} containing '+', got {list(ops)}")
        self.n_numbers = n_numbers
        self.min_number = min_number
        self.max_number = max_number
        self.max_target = max_target
        self.ops = tuple(ops)
        try:
            prompt_template.format(numbers=[1], target=1, ops="+")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"prompt_template may only use {{numbers}}, {{target}} and {{ops}}; {prompt_template!r} failed: {err!r}"
            ) from None
        self.prompt_template = prompt_template

    def _candidates(self, a: _Node, b: _Node) -> list[tuple[_Node, str, _Node]]:
        # Intermediates stay positive integers: subtraction only as larger-smaller, division only exact.
        out = [(a, op, b) for op in ("+", "*") if op in self.ops]  # commutative: one order suffices
        for x, y in ((a, b), (b, a)):
            if "-" in self.ops and x.value > y.value:
                out.append((x, "-", y))
            if "/" in self.ops and x.value % y.value == 0:
                out.append((x, "/", y))
        return out

    def _random_tree(self, rng: random.Random, numbers: list[int]) -> _Node:
        pool = [_Node(n, str(n), _ATOM) for n in numbers]
        while len(pool) > 1:
            i, j = rng.sample(range(len(pool)), 2)
            left, op, right = rng.choice(self._candidates(pool[i], pool[j]))
            pool = [node for k, node in enumerate(pool) if k not in (i, j)] + [_combine(left, op, right)]
        return pool[0]

    def sample(self, rng: random.Random) -> Problem:
        """Random numbers, then a random expression over all of them; its value is the target."""
        while True:
            numbers = [rng.randint(self.min_number, self.max_number) for _ in range(self.n_numbers)]
            tree = self._random_tree(rng, numbers)
            if 1 <= tree.value <= self.max_target:
                break
        target = tree.value
        key = ",".join(str(n) for n in sorted(numbers)) + f"->{target}"
        prompt = self.prompt_template.format(numbers=numbers, target=target, ops=_ops_text(self.ops))
        return Problem(
            prompt=prompt, answer=tree.text, meta={"key": key, "numbers": numbers, "target": target}
        )

    def orderings(self, problem: Problem) -> list[Problem]:
        """The problem with its numbers in every distinct order (the original first): the same key, target and
        reference answer, so a held-out set can be scored independently of how its numbers happen to be listed."""
        out, seen = [], set()
        for order in itertools.permutations(problem.meta["numbers"]):
            if order in seen:
                continue
            seen.add(order)
            numbers = list(order)
            prompt = self.prompt_template.format(numbers=numbers, target=problem.meta["target"], ops=_ops_text(self.ops))
            out.append(Problem(prompt=prompt, answer=problem.answer, meta={**problem.meta, "numbers": numbers}))
        return out

    def score(self, problem: Problem, completion: str) -> float:
        """d1-style reward: 0 without a parseable equation, 0.1 if wrong numbers or value, 1.0 if correct."""
        text = extract_equation(completion)
        if text is None:
            return 0.0
        parsed = parse_equation(text)
        if parsed is None:
            return 0.0
        value, literals = parsed
        if value is None or Counter(literals) != Counter(problem.meta["numbers"]):
            return FORMAT_SCORE
        return 1.0 if abs(value - problem.meta["target"]) < 1e-6 else FORMAT_SCORE

    def verify(self, problem: Problem, completion: str) -> bool:
        """Every given number used exactly once and the value equals the target."""
        return self.score(problem, completion) == 1.0
