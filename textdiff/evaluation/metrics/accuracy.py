"""Exact match and task accuracy (a task's own verifier from textdiff/data/tasks decides correctness)."""

from __future__ import annotations

from collections.abc import Sequence

from textdiff.data.tasks import Problem, get_task


def exact_match(predictions: Sequence[str], references: Sequence[str], strip: bool = True) -> float:
    """Fraction of predictions equal to their reference (after `str.strip` when `strip`)."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"exact_match needs equal, non-empty lists; got {len(predictions)} and {len(references)}")
    norm = (lambda s: s.strip()) if strip else (lambda s: s)
    return sum(norm(p) == norm(r) for p, r in zip(predictions, references)) / len(predictions)


def task_accuracy(task: str, problems: Sequence[Problem | dict], completions: Sequence[str], **task_kwargs) -> float:
    """Fraction of completions that `get_task(task, **task_kwargs).verify` accepts. A problem may be a `Problem`
    or a dict with "prompt", "answer" and the meta fields (a row of `Task.to_dataset`)."""
    if len(problems) != len(completions) or not problems:
        raise ValueError(f"task_accuracy needs equal, non-empty lists; got {len(problems)} and {len(completions)}")
    verifier = get_task(task, **task_kwargs)
    correct = 0
    for problem, completion in zip(problems, completions):
        if isinstance(problem, dict):
            meta = {k: v for k, v in problem.items() if k not in ("prompt", "answer")}
            problem = Problem(prompt=problem["prompt"], answer=problem["answer"], meta=meta)
        correct += bool(verifier.verify(problem, completion))
    return correct / len(problems)
