"""4x4 Sudoku: the 288 grids, unique-solution puzzles, splits by solution grid (no leakage), scoring."""

import random

import pytest

from textdiff.data.tasks import SudokuTask, get_task, split_of_key
from textdiff.data.tasks.sudoku import all_grids, count_solutions, extract_grid, is_valid_grid


def test_there_are_exactly_288_valid_grids():
    grids = all_grids()
    assert len(grids) == 288 == len(set(grids))
    assert all(is_valid_grid(g) for g in grids)
    assert not is_valid_grid("1234123412341234")  # rows fine, columns not


def test_puzzles_have_a_unique_solution_and_their_answer_verifies():
    task = SudokuTask(min_empty=6, max_empty=10)
    for p in task.generate(40, "train", seed=0):
        puzzle, solution = p.meta["puzzle"], p.meta["solution"]
        assert count_solutions(puzzle) == 1
        assert 6 <= puzzle.count("0") <= 10
        assert all(a == "0" or a == b for a, b in zip(puzzle, solution))
        assert puzzle in p.prompt and p.answer == solution
        assert task.verify(p, p.answer) and task.score(p, f"<answer>{p.answer}</answer>") == 1.0
    assert count_solutions("0" * 16, limit=1000) == 288


def test_splits_are_by_solution_grid_so_no_solution_leaks():
    task = SudokuTask()
    train, test = task.generate(300, "train", seed=0), task.generate(60, "test", seed=0)
    train_solutions = {p.meta["solution"] for p in train}
    test_solutions = {p.meta["solution"] for p in test}
    assert not train_solutions & test_solutions
    assert all(split_of_key(s) == "test" for s in test_solutions)
    assert all(split_of_key(s) == "train" for s in train_solutions)
    assert len({p.meta["puzzle"] for p in test}) == 60  # distinct puzzles, several per test solution
    assert len(test_solutions) < 60
    assert task.generate(60, "test", seed=0) == test  # deterministic


def test_extraction_and_partial_score():
    assert extract_grid("<answer>1 2 3</answer>") == "1230000000000000"
    assert extract_grid("no tag 12341234123412349999") == "1234123412341234"
    task = get_task("sudoku", min_empty=4, max_empty=4)
    p = task.sample(random.Random(0))
    wrong = "".join("0" if ch == "0" else ch for ch in p.meta["puzzle"])  # leave the empty cells empty
    assert task.score(p, wrong) == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_empty"):
        SudokuTask(min_empty=9, max_empty=3)
    with pytest.raises(ValueError, match="puzzle"):
        SudokuTask(prompt_template="no placeholder")
