"""evaluate module: distinct-n (unique n-grams / all n-grams over the corpus); wraps textdiff's distinct_n."""

import datasets
import evaluate

from textdiff.evaluation.metrics.diversity import distinct_n


class DistinctN(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Unique n-grams / all n-grams over the corpus (whitespace tokens).",
            citation="Li et al. 2016, A Diversity-Promoting Objective Function for Neural Conversation Models",
            inputs_description="predictions: list of str; n: n-gram order (default 2)",
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, n=2):
        return {f"distinct_{n}": distinct_n(predictions, n)}
