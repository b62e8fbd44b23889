"""Reward functions against hand-worked cases (d1 semantics), and the sandboxed HumanEval reward."""

import pytest

from textdiff.rl.rewards import (
    REWARDS,
    arithmetic_reward,
    countdown_partial_reward,
    countdown_reward,
    countdown_reward_d1,
    get_reward,
    humaneval_dataset,
    humaneval_program,
    humaneval_reward,
    sudoku_reward,
    sudoku_reward_d1,
)

NUMBERS, TARGET = [3, 5, 7], 56


@pytest.mark.parametrize(
    "completion, d1, lenient",
    [
        ("<answer>(3+5)*7</answer>", 1.0, 1.0),  # full
        ("think... <answer>7*(5+3)</answer>", 1.0, 1.0),
        ("<answer>(3+5)*7 </answer> then <answer>3+5+7</answer>", 0.1, 0.1),  # the last tag counts
        ("<answer>3+5*7</answer>", 0.1, 0.1),  # right numbers, wrong value: format only
        ("<answer>(3+3)*7</answer>", 0.1, 0.1),  # reused number
        ("<answer>(3+5)*7*1</answer>", 0.1, 0.1),  # extra number
        ("<answer>(3+5)*7=56</answer>", 0.1, 1.0),  # "=" is not an allowed character in d1
        ("<answer>-(3+5)*-7</answer>", 1.0, 0.0),  # d1's eval accepts unary minus; the task parser does not
        ("<answer>(3+5)*7 x</answer>", 0.1, 0.0),  # a non-arithmetic character: format only in d1
        ("<answer>3*5*7/(5-5)</answer>", 0.1, 0.1),  # 5 used twice -> numbers check fails first
        ("(3+5)*7", 0.0, 1.0),  # no <answer>: d1 gives nothing, the task's reader takes the last line
        ("", 0.0, 0.0),
    ],
)
def test_countdown_rewards_hand_worked(completion, d1, lenient):
    assert countdown_reward_d1([completion], [NUMBERS], [TARGET]) == [d1]
    assert countdown_reward([completion], [NUMBERS], [TARGET]) == [lenient]


@pytest.mark.parametrize(
    "completion, score",
    [("(3+5)*7", 1.0), ("<answer>7*(3+5)</answer>", 1.0), ("3+5*7", 0.5), ("7-5-3", 0.5), ("(3+3)*7", 0.1),
     ("8*7", 0.1), ("3*5*7/(5-5)", 0.1), ("3*5*7/(7-7)", 0.1), ("the answer", 0.0), ("", 0.0)],
)
def test_countdown_partial_reward_hand_worked(completion, score):
    # format 0.1: parseable; partial 0.5: the given numbers exactly once, wrong value;
    # full 1.0: and the target
    assert countdown_partial_reward([completion], [NUMBERS], [TARGET]) == [score]


def test_countdown_d1_evaluates_safely():
    assert countdown_reward_d1(["<answer>3**5**7</answer>"], [[3, 5, 7]], [1]) == [0.1]  # bounded power, no hang
    assert countdown_reward_d1(["<answer>7//2*4-3</answer>"], [[7, 2, 4, 3]], [9]) == [1.0]  # d1 evals "//" too
    assert countdown_reward_d1(["<answer>(7-7)/0</answer>"], [[7, 7, 0]], [0]) == [0.1]  # exception -> format


def test_countdown_reward_reads_conversational_completions_and_batches():
    completions = [[{"role": "assistant", "content": "<answer>(3+5)*7</answer>"}], "8*7"]
    assert countdown_reward(completions, [NUMBERS, NUMBERS], [TARGET, TARGET]) == [1.0, 0.1]
    with pytest.raises(ValueError):
        countdown_reward(completions, [NUMBERS], [TARGET, TARGET])  # misaligned columns are an error


def test_sudoku_rewards_hand_worked():
    solution = "1234341221434321"
    puzzle = "1030301221034301"  # 5 empty cells: indices 1, 3, 5, 10, 14
    assert sudoku_reward(["<answer>1234341221434321</answer>"], [puzzle], [solution]) == [1.0]
    # 4 of the 5 empty cells right (14 wrong); the wrong given at index 9 is not counted
    assert sudoku_reward(["<answer>1234 3412 2343 4311</answer>"], [puzzle], [solution]) == [pytest.approx(4 / 5)]
    # shorter than 16 digits: padded with "0" (the empty cells 10 and 14 are then wrong)
    assert sudoku_reward(["<answer>12343412</answer>"], [puzzle], [solution]) == [pytest.approx(3 / 5)]
    assert sudoku_reward(["1234341221434321"], [puzzle], [solution]) == [1.0]  # tag-free reading
    assert sudoku_reward_d1(["1234341221434321"], [puzzle], [solution]) == [0.0]  # d1: no tag, no reward
    assert sudoku_reward_d1(["x <answer>0000</answer> <answer>1234341221434321</answer>"], [puzzle],
                            [solution]) == [1.0]


def test_arithmetic_reward():
    assert arithmetic_reward(["12+34 = 46", "Answer: 45", "forty-six"], ["46", "46", "46"]) == [1.0, 0.0, 0.0]


def test_reward_registry():
    assert get_reward("countdown") is countdown_reward and set(REWARDS) >= {"countdown", "sudoku", "humaneval"}
    with pytest.raises(ValueError, match="unknown reward 'bleu'"):
        get_reward("bleu")


def test_humaneval_reward_runs_the_tests_in_the_sandbox():
    problems = humaneval_dataset(limit=2)
    assert len(problems) == 2 and problems[0]["task_id"] == "HumanEval/0"
    columns = {k: list(problems[k]) for k in ("prompt", "test", "entry_point")}
    rewards = humaneval_reward(list(problems["canonical_solution"]), **columns)
    assert rewards == [1.0, 1.0]
    wrong = ["    return True\n", "    while True:\n        pass\n"]  # a wrong answer; an infinite loop
    assert humaneval_reward(wrong, **columns, timeout=1.0) == [0.0, 0.0]
    hostile = ["    import os\n    os.remove(__file__)\n    return False\n"] * 2
    assert humaneval_reward(hostile, **columns) == [0.0, 0.0]
    program = humaneval_program("def f():\n", "    return 1\n", "def check(c):\n    assert c() == 1\n", "f")
    assert program.endswith("check(f)\n")
