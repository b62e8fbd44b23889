"""Datasets and scoring of the local lm-eval tasks: the synthetic verifiable tasks of textdiff.data.tasks.

`custom_dataset` builds the problems in memory (deterministic in task, split, seed: no file, no network);
`process_results` checks each completion with the task's own verifier.
"""

from __future__ import annotations

import datasets

from textdiff.data.tasks import Problem, get_task


def _dataset(name: str, num_problems: int = 100, seed: int = 0, split: str = "test", task_kwargs=None,
             **_metadata) -> datasets.DatasetDict:
    task = get_task(name, **(task_kwargs or {}))
    return datasets.DatasetDict({"test": task.to_dataset(int(num_problems), split, int(seed))})


def arithmetic_dataset(**metadata) -> datasets.DatasetDict:
    return _dataset("arithmetic", **metadata)


def countdown_dataset(**metadata) -> datasets.DatasetDict:
    return _dataset("countdown", **metadata)


def sudoku_dataset(**metadata) -> datasets.DatasetDict:
    return _dataset("sudoku", **metadata)


def _results(name: str, doc: dict, results: list[str]) -> dict:
    task = get_task(name)
    meta = {k: v for k, v in doc.items() if k not in ("prompt", "answer")}
    problem = Problem(prompt=doc["prompt"], answer=doc["answer"], meta=meta)
    return {"accuracy": float(task.verify(problem, results[0])), "score": task.score(problem, results[0])}


def process_arithmetic(doc: dict, results: list[str]) -> dict:
    return _results("arithmetic", doc, results)


def process_countdown(doc: dict, results: list[str]) -> dict:
    return _results("countdown", doc, results)


def process_sudoku(doc: dict, results: list[str]) -> dict:
    return _results("sudoku", doc, results)
