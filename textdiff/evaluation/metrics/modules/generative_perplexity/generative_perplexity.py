"""evaluate module: perplexity of texts under a judge causal LM; wraps textdiff's generative_perplexity."""

import datasets
import evaluate

from textdiff.evaluation.metrics.perplexity import generative_perplexity


class GenerativePerplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="exp(total NLL / total scored tokens) of the texts under a judge causal LM, plus per-text figures.",
            citation="",
            inputs_description='predictions: list of str; judge: "smollm2", a checkpoint dir or (model, tokenizer)',
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, judge="smollm2", max_length=None):
        return generative_perplexity(predictions, judge=judge, max_length=max_length)
