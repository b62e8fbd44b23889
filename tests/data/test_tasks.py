import itertools
from fractions import Fraction

import datasets
import pytest

from textdiff.data.tasks import (
    SPLITS,
    ArithmeticTask,
    CountdownTask,
    Problem,
    get_task,
    parse_equation,
    split_of_key,
)


def _countdown_problem(numbers, target) -> Problem:
    key = ",".join(map(str, sorted(numbers))) + f"->{target}"
    return Problem(prompt="", answer="", meta={"key": key, "numbers": list(numbers), "target": target})


# ---------------------------------------------------------------------------------------------- splits
def test_split_of_key_proportions():
    counts = {s: 0 for s in SPLITS}
    for i in range(20000):
        counts[split_of_key(f"{i}+{i * 7}")] += 1
    assert 0.88 < counts["train"] / 20000 < 0.92
    assert 0.04 < counts["valid"] / 20000 < 0.06 and 0.04 < counts["test"] / 20000 < 0.06


@pytest.mark.parametrize(
    "task",
    [ArithmeticTask(max_digits=2), CountdownTask(n_numbers=3, max_number=20)],
    ids=["arithmetic", "countdown"],
)
def test_splits_are_disjoint_deduplicated_and_deterministic(task):
    by_split = {
        split: task.generate(n, split, seed=0) for split, n in [("train", 400), ("valid", 40), ("test", 40)]
    }
    keys = {split: [p.meta["key"] for p in problems] for split, problems in by_split.items()}
    for split, split_keys in keys.items():
        assert len(split_keys) == len(set(split_keys))  # no duplicates within a split
        assert all(split_of_key(k) == split for k in split_keys)
    assert not set(keys["train"]) & set(keys["valid"])
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["valid"]) & set(keys["test"])
    # another seed gives other problems, but the same key never changes split
    other = task.generate(400, "train", seed=1)
    assert [p.meta["key"] for p in other] != keys["train"]
    assert not {p.meta["key"] for p in task.generate(200, "test", seed=5)} & set(keys["train"])
    # deterministic per seed
    assert task.generate(40, "valid", seed=0) == by_split["valid"]


def test_rl_prompts_exclude_exactly_the_sft_problems(tmp_path):
    """An RL recipe with data.exclude_train_examples = N, exclude_seed = S leaves out exactly the N train problems
    the SFT recipe drew with seed S, and still returns its own seed's problems (deterministically)."""
    from textdiff.config import load_recipe
    from textdiff.data.tasks import excluded_train_keys

    sft = load_recipe("recipes/masked/countdown_sft.yaml", [f"run.output_dir={tmp_path}/sft", "data.num_train_examples=300"])
    task = get_task(sft.data.task, **sft.data.task_kwargs)
    sft_keys = {p.meta["key"] for p in task.generate(sft.data.num_train_examples, "train", sft.run.seed)}
    rl = load_recipe("recipes/rl/countdown_coupled_grpo.yaml", [f"run.output_dir={tmp_path}/rl", "run.seed=3",
                     "data.exclude_train_examples=300", f"data.exclude_seed={sft.run.seed}"])
    assert excluded_train_keys(rl.data) == sft_keys
    rl_problems = task.generate(400, "train", rl.run.seed, excluded_train_keys(rl.data))
    rl_keys = [p.meta["key"] for p in rl_problems]
    assert not set(rl_keys) & sft_keys and len(set(rl_keys)) == 400
    assert all(split_of_key(k) == "train" for k in rl_keys)
    # without the exclusion the same seed would have repeated SFT problems; with it, the others come in order
    plain = [p.meta["key"] for p in task.generate(900, "train", rl.run.seed)]
    assert set(plain) & sft_keys
    assert rl_keys == [k for k in plain if k not in sft_keys][:400]
    assert excluded_train_keys(sft.data) == frozenset()
    with pytest.raises(ValueError, match="needs data.task"):
        excluded_train_keys(load_recipe("recipes/masked/arithmetic_sft.yaml",
                                        [f"run.output_dir={tmp_path}/a", "data.task=null", "data.exclude_train_examples=5"]).data)
    with pytest.raises(ValueError, match="exclude_train_examples must be >= 0"):
        excluded_train_keys(load_recipe("recipes/masked/countdown_sft.yaml",
                                        [f"run.output_dir={tmp_path}/n", "data.exclude_train_examples=-1"]).data)


def test_generation_fails_loudly_when_the_space_is_too_small():
    tiny = ArithmeticTask(min_digits=1, max_digits=1, ops=("+",))  # 55 distinct keys in total
    with pytest.raises(RuntimeError, match="only .* distinct 'valid' problems"):
        tiny.generate(30, "valid", seed=0)


def test_get_task_and_to_dataset():
    task = get_task("countdown", n_numbers=4, max_number=50)
    assert isinstance(task, CountdownTask) and task.n_numbers == 4
    ds = task.to_dataset(12, "test", seed=3)
    assert isinstance(ds, datasets.Dataset) and len(ds) == 12
    assert {"prompt", "answer", "numbers", "target", "key"} <= set(ds.column_names)
    assert all(len(n) == 4 for n in ds["numbers"])
    assert isinstance(get_task("arithmetic"), ArithmeticTask)
    with pytest.raises(ValueError, match="unknown task 'chess'.*arithmetic"):
        get_task("chess")


# ---------------------------------------------------------------------------------------------- arithmetic
def test_arithmetic_problems_and_generated_answers_verify():
    task = ArithmeticTask(min_digits=1, max_digits=3)
    problems = task.generate(300, "train", seed=0)
    ops = set()
    for p in problems:
        a, op, b = p.meta["a"], p.meta["op"], p.meta["b"]
        ops.add(op)
        assert p.prompt == f"Compute {a}{op}{b}."
        assert int(p.answer) == {"+": a + b, "-": a - b, "*": a * b}[op]
        assert task.verify(p, p.answer) and task.verify(p, f"Answer: {p.answer}")
        assert not task.verify(p, str(int(p.answer) + 1))
    assert ops == {"+", "-", "*"}
    assert any(int(p.answer) < 0 for p in problems)  # subtraction can go negative


def test_arithmetic_commutative_key_is_canonical():
    task = ArithmeticTask()
    a = Problem("Compute 485+37.", "522", {})
    keys = {p.meta["key"] for p in task.generate(500, "train", 0) if p.meta["op"] == "+"}
    assert all(int(k.split("+")[0]) <= int(k.split("+")[1]) for k in keys)
    assert task.verify(a, "485+37 = 522")


@pytest.mark.parametrize(
    "completion, ok",
    [
        ("522", True),
        ("The sum is 522.", True),
        ("Answer: 522", True),
        ("37+485=522", True),
        ("<answer>522</answer>", True),
        ("Answer: 522 (because 37+485)", True),  # first number after the marker, not the last overall
        ("1,234 is wrong; the answer is 522", True),
        ("522.5", False),
        ("523", False),
        ("37+485", False),
        ("no number here", False),
        ("", False),
    ],
)
def test_arithmetic_verifier_cases(completion, ok):
    problem = Problem("Compute 37+485.", "522", {"key": "37+485"})
    assert ArithmeticTask().verify(problem, completion) is ok


@pytest.mark.parametrize(
    "completion, ok",
    [("-448", True), ("37-485 = -448", True), ("Answer: -448", True), ("448", False), ("5-448", False)],
)
def test_arithmetic_verifier_negative_answers(completion, ok):
    problem = Problem("Compute 37-485.", "-448", {"key": "37-485"})
    assert ArithmeticTask().verify(problem, completion) is ok


# ---------------------------------------------------------------------------------------------- countdown
def test_countdown_generated_answers_always_verify():
    for n_numbers in (3, 4):
        task = CountdownTask(n_numbers=n_numbers, max_number=100, max_target=1000)
        problems = task.generate(300, "train", seed=n_numbers)
        used_ops = set()
        for p in problems:
            assert len(p.meta["numbers"]) == n_numbers and 1 <= p.meta["target"] <= 1000
            assert f"{p.meta['numbers']}" in p.prompt and f"equals {p.meta['target']}." in p.prompt
            assert task.verify(p, p.answer), p
            assert task.score(p, f"<answer>{p.answer}</answer>") == 1.0
            used_ops |= set(p.answer) & set("+-*/")
        assert used_ops == {"+", "-", "*", "/"}


@pytest.mark.parametrize(
    "completion, score",
    [
        ("(3+5)*7", 1.0),
        ("<answer>(3+5)*7</answer>", 1.0),
        ("<answer>7*(5+3)</answer>", 1.0),
        ("let me think\nAnswer: (3 + 5) * 7 = 56", 1.0),
        ("reasoning...\n<answer>\\boxed{7*(3+5)}</answer>", 1.0),
        ("<answer>3+5*7</answer>", 0.1),  # right numbers, wrong value (38)
        ("<answer>(3+3)*7</answer>", 0.1),  # reused number, 5 missing
        ("<answer>(3+5)*7*1</answer>", 0.1),  # extra number
        ("<answer>8*7</answer>", 0.1),  # numbers not the given ones
        ("<answer>3*5*7/(5-5)</answer>", 0.1),  # division by zero: well-formed, wrong
        ("<answer>(3+5)*7**1</answer>", 0.0),  # power is not allowed
        ("<answer>-(3+5)*-7</answer>", 0.0),  # unary minus is not allowed
        ("<answer>the answer is 56</answer>", 0.0),
        ("", 0.0),
    ],
)
def test_countdown_score_hand_worked(completion, score):
    problem = _countdown_problem([3, 5, 7], 56)
    task = CountdownTask()
    assert task.score(problem, completion) == score
    assert task.verify(problem, completion) is (score == 1.0)


def test_countdown_division_is_exact_not_floored():
    task = CountdownTask()
    problem = _countdown_problem([7, 2, 4], 14)
    assert task.verify(problem, "7/2*4")  # 3.5*4 = 14 exactly
    assert not task.verify(_countdown_problem([7, 2, 4], 12), "7/2*4")  # would be 12 with floor division


def test_countdown_duplicate_numbers_must_each_be_used(tmp_path):
    task = CountdownTask()
    problem = _countdown_problem([4, 4, 2], 10)
    assert task.verify(problem, "4+4+2")
    assert task.score(problem, "4*2+2") == 0.1  # one 4 used, 2 reused


def test_countdown_orderings_list_every_distinct_order_once():
    task = CountdownTask()
    problem = task.generate(1, "test", seed=3)[0]
    variants = task.orderings(problem)
    assert variants[0].prompt == problem.prompt  # the original order first
    distinct = {tuple(p) for p in itertools.permutations(problem.meta["numbers"])}
    assert {tuple(v.meta["numbers"]) for v in variants} == distinct and len(variants) == len(distinct)
    assert len({v.prompt for v in variants}) == len(variants)
    for v in variants:
        assert v.meta["key"] == problem.meta["key"] and v.meta["target"] == problem.meta["target"]
        assert f"{v.meta['numbers']}" in v.prompt and task.verify(v, problem.answer)
    repeated = _countdown_problem([4, 4, 2], 10)
    assert [v.meta["numbers"] for v in task.orderings(repeated)] == [[4, 4, 2], [4, 2, 4], [2, 4, 4]]


def test_malicious_completion_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    task = CountdownTask()
    problem = _countdown_problem([3, 5, 7], 56)
    for payload in [
        f"<answer>__import__('os').system('touch {marker}')</answer>",
        f"Answer: (3+5)*7 or open('{marker}', 'w').write('x')",
        f"__import__('pathlib').Path('{marker}').touch()",
        "<answer>(lambda: 56)()</answer>",
        "<answer>" + "(" * 500 + "56" + ")" * 500 + "</answer>",
    ]:
        assert task.verify(problem, payload) is False
        assert task.score(problem, payload) == 0.0
    assert not marker.exists()
    arithmetic = ArithmeticTask()
    assert not arithmetic.verify(
        Problem("Compute 1+1.", "2", {}), f"__import__('os').system('touch {marker}')"
    )
    assert not marker.exists()


def test_parse_equation_exact_values():
    assert parse_equation("(3+5)*7") == (Fraction(56), [3, 5, 7])
    assert parse_equation("1/3+1/3+1/3") == (Fraction(1), [1, 3, 1, 3, 1, 3])
    assert parse_equation("5/(2-2)") == (None, [5, 2, 2])
    assert (
        parse_equation("2**10") is None and parse_equation("x+1") is None and parse_equation("3.5+1") is None
    )


# ---------------------------------------------------------------------------------------------- digit shift
def test_digit_shift_answers_are_the_shifted_digits_and_verify():
    from textdiff.data.tasks import DigitShiftTask

    task = get_task("digit_shift", n_digits=50)
    assert isinstance(task, DigitShiftTask)
    problems = task.generate(100, "train", seed=0)
    shifts = set()
    for p in problems:
        digits, k = p.meta["digits"], p.meta["shift"]
        shifts.add(k)
        assert len(digits) == 50 and p.prompt == f"Shift each digit by {k} (mod 10): {digits}"
        assert p.meta["key"] == f"{k}:{digits}"
        # independent computation of the answer: digit i + k, wrapped past 9
        assert p.answer == "".join("0123456789"[(int(d) + k) % 10] for d in digits)
        assert task.verify(p, p.answer) and task.verify(p, f" {p.answer}\n")
        assert task.score(p, p.answer) == 1.0
    assert shifts == set(range(1, 10))


def test_digit_shift_verifier_hand_worked():
    from textdiff.data.tasks.digit_shift import shift_digits

    assert shift_digits("0189", 3) == "3412"  # 8 + 3 = 11 -> 1, 9 + 3 -> 2
    task = get_task("digit_shift", n_digits=4)
    problem = Problem("Shift each digit by 3 (mod 10): 0189", "3412", {"key": "3:0189"})
    assert task.verify(problem, "3412") and task.verify(problem, "34 12")
    assert not task.verify(problem, "3413")  # one digit wrong
    assert not task.verify(problem, "341")  # one digit missing
    assert not task.verify(problem, "34120")  # one digit extra
    assert not task.verify(problem, "3412.")  # anything but digits and whitespace fails
    assert task.score(problem, "3413") == 0.75
    assert task.score(problem, "34") == 0.5  # the missing digits count as wrong
    assert task.score(problem, "341200") == 4 / 6
    assert task.score(problem, "") == 0.0


def test_digit_shift_splits_are_leak_free_and_argument_errors():
    task = get_task("digit_shift", n_digits=8, min_key=2, max_key=5)
    keys = {split: {p.meta["key"] for p in task.generate(n, split, seed=0)}
            for split, n in [("train", 300), ("valid", 30), ("test", 30)]}
    assert all(split_of_key(k) == split for split, ks in keys.items() for k in ks)
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["valid"] and not keys["valid"] & keys["test"]
    assert {int(k.split(":")[0]) for k in keys["train"]} == {2, 3, 4, 5}
    assert task.generate(30, "test", seed=0) == task.generate(30, "test", seed=0)
    with pytest.raises(ValueError, match="n_digits must be >= 1"):
        get_task("digit_shift", n_digits=0)
    with pytest.raises(ValueError, match="min_key <= max_key <= 9"):
        get_task("digit_shift", min_key=3, max_key=10)
    with pytest.raises(ValueError, match="must contain"):
        get_task("digit_shift", prompt_template="no digits here")


def test_digit_shift_answer_is_200_tokens_under_the_recipe_tokenizer():
    """The benchmark recipe's tokenizer (trained BPE, split digits) spells the 200-digit answer in 200 tokens,
    and prompt + the 256-token canvas fits the recipe's max_length."""
    from textdiff.config import load_recipe
    from textdiff.data import train_bpe_tokenizer

    recipe = load_recipe("recipes/masked/digit_shift_sft.yaml")
    task = get_task(recipe.data.task, **recipe.data.task_kwargs)
    problems = task.generate(50, "train", seed=0)
    tok = train_bpe_tokenizer((p.prompt + " " + p.answer for p in problems), vocab_size=recipe.tokenizer.vocab_size,
                              split_digits=recipe.tokenizer.split_digits)
    for p in problems[:10]:
        assert len(tok(p.answer, add_special_tokens=False)["input_ids"]) == 200
        prompt_len = len(tok(p.prompt, add_special_tokens=False)["input_ids"])
        assert prompt_len + recipe.data.answer_length <= recipe.data.max_length
