"""evaluate module: within-text repeated n-gram fraction, averaged; wraps textdiff's repetition_rate."""

import datasets
import evaluate

from textdiff.evaluation.metrics.diversity import repetition_rate


class RepetitionRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Mean over texts of the fraction of a text's n-grams that repeat an earlier one.",
            citation="",
            inputs_description="predictions: list of str; n: n-gram order (default 4)",
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, n=4):
        return {"repetition_rate": repetition_rate(predictions, n)}
