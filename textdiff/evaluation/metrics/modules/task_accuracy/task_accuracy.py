"""evaluate module: task accuracy by the task's verifier (textdiff/data/tasks); wraps textdiff's task_accuracy."""

import json

import datasets
import evaluate

from textdiff.evaluation.metrics.accuracy import task_accuracy


class TaskAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of completions the task's verifier accepts.",
            citation="",
            inputs_description=(
                "predictions: completions (str); references: each problem as a JSON object with prompt, answer and "
                "meta fields (a row of Task.to_dataset); task: a task name of textdiff.data.tasks.TASKS"
            ),
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, task="arithmetic"):
        problems = [json.loads(r) for r in references]
        return {"accuracy": task_accuracy(task, problems, predictions)}
