"""evaluate module: self-BLEU (mean BLEU-4 of each text against the others); wraps textdiff's self_bleu."""

import datasets
import evaluate

from textdiff.evaluation.metrics.diversity import self_bleu


class SelfBleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Mean sentence BLEU-4 of each text against all the others as references (lower = more diverse).",
            citation="Zhu et al. 2018, Texygen",
            inputs_description="predictions: list of str (at least 2)",
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions):
        return {"self_bleu": self_bleu(predictions)}
