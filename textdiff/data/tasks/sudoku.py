"""4x4 Sudoku: fill the empty cells (0) so every row, column and 2x2 box holds 1-4 exactly once.

All 288 valid 4x4 grids are enumerated once. A puzzle removes cells of one grid in random order for as long as
the puzzle keeps exactly one solution. The split is decided by the **solution grid** (SPG's fix of d1's Sudoku
data): puzzles of one solution all land in the same split, so no test solution is ever seen in training.
"""

from __future__ import annotations

import functools
import itertools
import random
import re

from textdiff.data.tasks import SPLITS, Problem, Task, split_of_key

_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
CELLS = 16
DEFAULT_PROMPT = "Solve this 4x4 Sudoku (rows left to right, 0 = empty): {puzzle}"


def _units() -> list[list[int]]:
    rows = [[4 * r + c for c in range(4)] for r in range(4)]
    cols = [[4 * r + c for r in range(4)] for c in range(4)]
    boxes = [[4 * (br + r) + bc + c for r in range(2) for c in range(2)] for br in (0, 2) for bc in (0, 2)]
    return rows + cols + boxes


UNITS = _units()
PEERS = [sorted({p for unit in UNITS if i in unit for p in unit} - {i}) for i in range(CELLS)]


def is_valid_grid(grid: str) -> bool:
    """A complete 16-digit grid that satisfies every row, column and box constraint."""
    return len(grid) == CELLS and all(sorted(grid[i] for i in unit) == list("1234") for unit in UNITS)


@functools.lru_cache(maxsize=1)
def all_grids() -> tuple[str, ...]:
    """The 288 valid 4x4 Sudoku grids, as 16-character strings, in lexicographic order."""
    rows = ["".join(p) for p in itertools.permutations("1234")]
    partial = [""]
    for _ in range(4):  # add a row at a time, keeping only prefixes whose columns and boxes have no repeat
        partial = [g + r for g in partial for r in rows if _consistent(g + r)]
    return tuple(sorted(partial))


def _consistent(prefix: str) -> bool:
    for unit in UNITS:
        seen = [prefix[i] for i in unit if i < len(prefix)]
        if len(seen) != len(set(seen)):
            return False
    return True


def count_solutions(puzzle: str, limit: int = 2) -> int:
    """Number of completions of `puzzle` (0 = empty), counting up to `limit` (backtracking)."""
    cells = list(puzzle)
    try:
        empty = cells.index("0")
    except ValueError:
        return int(is_valid_grid(puzzle))
    used = {cells[p] for p in PEERS[empty]}
    total = 0
    for digit in "1234":
        if digit in used:
            continue
        cells[empty] = digit
        total += count_solutions("".join(cells), limit - total)
        if total >= limit:
            break
    return total


def extract_grid(completion: str) -> str:
    """d1's reading of an answer: the digits of the last <answer>..</answer> (else of the whole completion),
    padded with "0" or truncated to 16."""
    tags = _ANSWER_TAG_RE.findall(completion)
    text = tags[-1] if tags else completion
    digits = "".join(ch for ch in text if ch.isdigit())
    return (digits + "0" * CELLS)[:CELLS]


class SudokuTask(Task):
    """4x4 Sudoku puzzles with a unique solution and between `min_empty` and `max_empty` empty cells."""

    name = "sudoku"

    def __init__(self, min_empty: int = 4, max_empty: int = 10, prompt_template: str = DEFAULT_PROMPT) -> None:
        if not 1 <= min_empty <= max_empty <= 12:
            raise ValueError(f"need 1 <= min_empty <= max_empty <= 12, got {min_empty}, {max_empty}")
        if "{puzzle}" not in prompt_template:
            raise ValueError(f"prompt_template must contain {{puzzle}}, got {prompt_template!r}")
        self.min_empty = min_empty
        self.max_empty = max_empty
        self.prompt_template = prompt_template

    def _puzzle(self, rng: random.Random, solution: str) -> str | None:
        cells = list(solution)
        order = list(range(CELLS))
        rng.shuffle(order)
        target = rng.randint(self.min_empty, self.max_empty)
        removed = 0
        for i in order:
            if removed == target:
                break
            keep, cells[i] = cells[i], "0"
            if count_solutions("".join(cells)) == 1:
                removed += 1
            else:
                cells[i] = keep
        return "".join(cells) if removed >= self.min_empty else None

    def sample(self, rng: random.Random, split: str | None = None) -> Problem:
        """A random puzzle (of a solution grid from `split`, if given); meta["key"] is the puzzle itself."""
        grids = all_grids() if split is None else [g for g in all_grids() if split_of_key(g) == split]
        while True:
            solution = rng.choice(grids)
            puzzle = self._puzzle(rng, solution)
            if puzzle is not None:
                break
        return Problem(
            prompt=self.prompt_template.format(puzzle=puzzle),
            answer=solution,
            meta={"key": puzzle, "puzzle": puzzle, "solution": solution, "split_key": solution},
        )

    def generate(self, n: int, split: str = "train", seed: int = 0) -> list[Problem]:
        """`n` distinct puzzles whose solution grids all belong to `split` (decided by the grid's hash)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        rng = random.Random(f"{self.name}:{split}:{seed}")
        problems, seen, draws = [], set(), 0
        while len(problems) < n:
            if draws >= 50 * n + 1000:
                raise RuntimeError(
                    f"sudoku: found only {len(problems)} distinct {split!r} puzzles in {draws} draws (asked for {n})"
                )
            draws += 1
            problem = self.sample(rng, split)
            if problem.meta["key"] not in seen:
                seen.add(problem.meta["key"])
                problems.append(problem)
        return problems

    def score(self, problem: Problem, completion: str) -> float:
        """d1: the fraction of the puzzle's empty cells that the answer fills correctly."""
        return sudoku_score(extract_grid(completion), problem.meta["puzzle"], problem.meta["solution"])

    def verify(self, problem: Problem, completion: str) -> bool:
        return self.score(problem, completion) == 1.0


def sudoku_score(grid: str, puzzle: str, solution: str) -> float:
    """Fraction of the empty cells of `puzzle` on which `grid` agrees with `solution`."""
    empty = [i for i, ch in enumerate(puzzle) if ch == "0"]
    if not empty:
        return 0.0
    return sum(grid[i] == solution[i] for i in empty) / len(empty)
