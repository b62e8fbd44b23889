"""Evaluation metrics: plain functions, and the same metrics as local `evaluate` modules (`load(name)`)."""

from textdiff.evaluation.metrics.accuracy import exact_match, task_accuracy
from textdiff.evaluation.metrics.diversity import distinct_n, repetition_rate, self_bleu, sentence_bleu
from textdiff.evaluation.metrics.elbo import elbo_log_likelihood, elbo_perplexity, log_likelihood
from textdiff.evaluation.metrics.pass_at_k import mean_pass_at_k, pass_at_k
from textdiff.evaluation.metrics.perplexity import generative_perplexity, load_judge
from textdiff.evaluation.metrics.registry import METRIC_NAMES, load

__all__ = [
    "METRIC_NAMES",
    "distinct_n",
    "elbo_log_likelihood",
    "elbo_perplexity",
    "exact_match",
    "generative_perplexity",
    "load",
    "load_judge",
    "log_likelihood",
    "mean_pass_at_k",
    "pass_at_k",
    "repetition_rate",
    "self_bleu",
    "sentence_bleu",
    "task_accuracy",
]
