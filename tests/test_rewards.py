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
    humaneval_tests,
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


def _humaneval(limit=None):
    problems = humaneval_dataset(limit=limit)
    return problems, {k: list(problems[k]) for k in ("prompt", "test", "entry_point")}


def test_humaneval_reward_runs_the_tests_in_the_sandbox():
    problems, columns = _humaneval(limit=10)
    assert len(problems) == 10 and problems[0]["task_id"] == "HumanEval/0"
    assert humaneval_reward(list(problems["canonical_solution"]), **columns) == [1.0] * 10
    stubs = [""] * 5 + ["    pass\n"] * 5  # the prompt alone (a docstring body), and `pass`
    assert humaneval_reward(stubs, **columns) == [0.0] * 10
    wrong = ["    return True\n", "    while True:\n        pass\n"]  # a wrong answer; an infinite loop
    assert humaneval_reward(wrong, **{k: v[:2] for k, v in columns.items()}, timeout=1.0) == [0.0, 0.0]
    program = humaneval_program("def f():\n", "    return 1\n", "def check(c):\n    assert c() == 1\n", "f")
    assert program.endswith("check(f)\n")
    tests = humaneval_tests("def f():\n", "def check(c):\n    assert c() == 1\n", "f")
    assert tests.setup == "def f():\n" and tests.entry_point == "f" and "check(f)" not in tests.code


@pytest.mark.slow
def test_humaneval_all_canonical_solutions_pass_and_all_stubs_fail():
    problems, columns = _humaneval()
    assert len(problems) == 164
    assert humaneval_reward(list(problems["canonical_solution"]), **columns, timeout=10.0) == [1.0] * 164
    assert humaneval_reward([""] * 164, **columns, timeout=10.0) == [0.0] * 164
    assert humaneval_reward(["    pass\n"] * 164, **columns, timeout=10.0) == [0.0] * 164


# completions of HumanEval/0 (has_close_elements(numbers, threshold)) that try to get reward without solving it;
# the old sandbox gave 1.0 to the early exits, the test reader and the always-equal object
HOSTILE_COMPLETIONS = {
    "sys.exit(0) in the body": "    import sys\n    sys.exit(0)\n",
    "sys.exit(0) at module level": "    return False\n\nimport sys\nsys.exit(0)\n",
    "SystemExit(None)": "    raise SystemExit(None)\n",
    "os._exit(0)": "    import os\n    os._exit(0)\n",
    "SystemExit from a trace hook on check": (
        "    return False\n\n"
        "import sys\n"
        "def _tracer(frame, event, arg):\n"
        "    if event == 'call' and frame.f_code.co_name == 'check':\n"
        "        raise SystemExit(0)\n"
        "sys.settrace(_tracer)\n"
    ),
    "removing its own file": "    import os\n    os.remove(__file__)\n    return False\n",
    "reading the tests": (
        "    import ast\n"
        "    table = []\n"
        "    for path in ('program.py', globals().get('__file__') or ''):\n"
        "        try:\n"
        "            tree = ast.parse(open(path).read())\n"
        "        except (OSError, SyntaxError):\n"
        "            continue\n"
        "        for node in ast.walk(tree):\n"
        "            call = getattr(node, 'left', None)\n"
        "            if isinstance(node, ast.Compare) and getattr(getattr(call, 'func', None), 'id', '') == 'candidate':\n"
        "                table.append(([ast.literal_eval(a) for a in node.left.args],\n"
        "                              ast.literal_eval(node.comparators[0])))\n"
        "    for args, expected in table:\n"
        "        if args == [numbers, threshold]:\n"
        "            return expected\n"
    ),
    "an always-equal object": (
        "    class Anything:\n"
        "        def __eq__(self, other):\n"
        "            return True\n"
        "    return Anything()\n"
    ),
    "an always-equal bool subclass": (
        "    class Truthy(int):\n"
        "        def __eq__(self, other):\n"
        "            return True\n"
        "        __hash__ = int.__hash__\n"
        "    return Truthy(1)\n"
    ),
}


def test_humaneval_reward_gives_nothing_to_hostile_completions():
    _, columns = _humaneval(limit=1)
    names = list(HOSTILE_COMPLETIONS)
    repeated = {k: v * len(names) for k, v in columns.items()}
    rewards = humaneval_reward([HOSTILE_COMPLETIONS[n] for n in names], **repeated)
    assert dict(zip(names, rewards)) == dict.fromkeys(names, 0.0)
