"""evaluate module: unbiased pass@k averaged over problems; wraps textdiff's pass_at_k."""

import datasets
import evaluate

from textdiff.evaluation.metrics.pass_at_k import mean_pass_at_k


class PassAtK(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Unbiased pass@k = 1 - C(n-c, k) / C(n, k), averaged over problems.",
            citation="Chen et al. 2021, Evaluating Large Language Models Trained on Code",
            inputs_description="predictions: correct samples c per problem; references: samples n per problem; k",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, k=1):
        return {f"pass@{k}": mean_pass_at_k(references, predictions, k)}
