"""evaluate module: exact string match (after strip); wraps textdiff's exact_match."""

import datasets
import evaluate

from textdiff.evaluation.metrics.accuracy import exact_match


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of predictions equal to their reference (after str.strip).",
            citation="",
            inputs_description="predictions: list of str; references: list of str",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        return {"exact_match": exact_match(predictions, references)}
