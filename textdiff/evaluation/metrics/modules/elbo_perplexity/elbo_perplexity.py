"""evaluate module: the ELBO perplexity bound of texts under a masked checkpoint; wraps textdiff's elbo_perplexity."""

import datasets
import evaluate

from textdiff.evaluation.metrics.elbo import elbo_perplexity


class ElboPerplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="exp(-sum ELBO / scored tokens): an upper bound on the perplexity of the texts under a "
                        "masked-diffusion checkpoint (LLaDA's Monte Carlo estimator); exact for AR checkpoints.",
            citation="Nie et al. 2025, Large Language Diffusion Models (Appendix B.5)",
            inputs_description="predictions: list of str; checkpoint: a checkpoint dir or (model, tokenizer); "
                               "mc_num, batch_size, seed, max_length",
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, checkpoint=None, mc_num=128, batch_size=32, seed=0, max_length=None):
        if checkpoint is None:
            raise ValueError("elbo_perplexity needs checkpoint= (a checkpoint directory or (model, tokenizer))")
        return elbo_perplexity(predictions, checkpoint, mc_num=mc_num, batch_size=batch_size, seed=seed,
                               max_length=max_length)
