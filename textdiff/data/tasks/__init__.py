"""Synthetic verifiable tasks (generators + verifiers) for SFT, benchmarks and RL rewards.

Every problem has a canonical key (e.g. "37+485"); the key's hash fixes its split
(train 90% / valid 5% / test 5%), so the same problem can never appear in two splits,
whatever seed or generation order produced it.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import datasets

SPLITS = ("train", "valid", "test")
SPLIT_PERCENT = {"train": 90, "valid": 5, "test": 5}


@dataclass
class Problem:
    """One task instance; `meta["key"]` is its canonical key."""

    prompt: str
    """Question shown to the model."""
    answer: str
    """Reference answer (SFT target); `Task.verify` decides correctness, not string equality."""
    meta: dict = field(default_factory=dict)
    """Task-specific fields (key, operands, numbers, target ...); become dataset columns."""


def split_of_key(key: str) -> str:
    """The split ("train" / "valid" / "test") a canonical problem key belongs to."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < SPLIT_PERCENT["train"]:
        return "train"
    if bucket < SPLIT_PERCENT["train"] + SPLIT_PERCENT["valid"]:
        return "valid"
    return "test"


class Task(ABC):
    """Base class: subclasses implement `sample` (one random problem with meta["key"]) and `verify`."""

    name = "task"

    @abstractmethod
    def sample(self, rng: random.Random) -> Problem:
        """Draw one random problem (any split); `generate` filters by split."""

    @abstractmethod
    def verify(self, problem: Problem, completion: str) -> bool:
        """True iff the completion solves the problem."""

    def score(self, problem: Problem, completion: str) -> float:
        """Reward in [0, 1]; binary unless a task defines partial credit."""
        return float(self.verify(problem, completion))

    def generate(self, n: int, split: str = "train", seed: int = 0, exclude: frozenset[str] = frozenset()) -> list[Problem]:
        """`n` distinct problems of `split`, deterministic in (task, split, seed), none with a key in `exclude`
        (e.g. the problems an SFT run trained on, so RL prompts are new to the policy)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        # A string seed is hashed with sha512 by `random`, so it is stable across runs and machines.
        rng = random.Random(f"{self.name}:{split}:{seed}")
        problems: list[Problem] = []
        seen: set[str] = set()
        max_draws = 200 * n + 1000  # valid/test hold 5% of keys: ~20 draws per problem, plus duplicates
        draws = 0
        while len(problems) < n:
            if draws >= max_draws:
                raise RuntimeError(
                    f"{self.name}: found only {len(problems)} distinct {split!r} problems in {draws} draws "
                    f"(asked for {n}, {len(exclude)} keys excluded); the task's problem space is too small for this n"
                )
            draws += 1
            problem = self.sample(rng)
            key = problem.meta["key"]
            if key in seen or key in exclude or split_of_key(key) != split:
                continue
            seen.add(key)
            problems.append(problem)
        return problems

    def to_dataset(self, n: int, split: str = "train", seed: int = 0, exclude: frozenset[str] = frozenset()) -> datasets.Dataset:
        """`generate` as a `datasets.Dataset` with "prompt", "answer" and one column per meta field."""
        problems = self.generate(n, split, seed, exclude)
        columns: dict[str, list] = {
            "prompt": [p.prompt for p in problems],
            "answer": [p.answer for p in problems],
        }
        for name in problems[0].meta if problems else ():
            if name not in columns:
                columns[name] = [p.meta[name] for p in problems]
        return datasets.Dataset.from_dict(columns)


# Imported after the base classes: the task modules subclass `Task` and build `Problem`s.
from textdiff.data.tasks.arithmetic import ArithmeticTask
from textdiff.data.tasks.countdown import CountdownTask, parse_equation
from textdiff.data.tasks.digit_shift import DigitShiftTask
from textdiff.data.tasks.sudoku import SudokuTask

TASKS: dict[str, type[Task]] = {
    "arithmetic": ArithmeticTask,
    "countdown": CountdownTask,
    "digit_shift": DigitShiftTask,
    "sudoku": SudokuTask,
}


def get_task(name: str, **kwargs) -> Task:
    """Build a registered task by name, e.g. `get_task("countdown", n_numbers=4)`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name](**kwargs)


def excluded_train_keys(data) -> frozenset[str]:
    """Keys of the first `data.exclude_train_examples` train problems drawn with `data.exclude_seed` (another
    recipe's training problems, e.g. the SFT run's, so RL prompts are new); empty when nothing is excluded.
    `data` is a recipe's DataConfig."""
    if data.exclude_train_examples < 0:
        raise ValueError(f"data.exclude_train_examples must be >= 0, got {data.exclude_train_examples}")
    if not data.exclude_train_examples:
        return frozenset()
    if not data.task:
        raise ValueError("data.exclude_train_examples needs data.task: it leaves out problems of a synthetic task")
    task = get_task(data.task, **data.task_kwargs)
    return frozenset(p.meta["key"] for p in task.generate(data.exclude_train_examples, "train", data.exclude_seed))


__all__ = [
    "SPLITS",
    "TASKS",
    "ArithmeticTask",
    "CountdownTask",
    "DigitShiftTask",
    "Problem",
    "SudokuTask",
    "Task",
    "excluded_train_keys",
    "get_task",
    "parse_equation",
    "split_of_key",
]
