"""`load(name)`: the local `evaluate` module scripts shipped in textdiff/evaluation/metrics/modules/."""

from __future__ import annotations

from pathlib import Path

MODULES_DIR = Path(__file__).parent / "modules"
METRIC_NAMES = (
    "distinct_n",
    "elbo_perplexity",
    "exact_match",
    "generative_perplexity",
    "pass_at_k",
    "repetition_rate",
    "self_bleu",
    "task_accuracy",
)
"""the metric modules `load` knows."""


def load(name: str):
    """The `evaluate` module of a textdiff metric, loaded from its local script (works offline)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRIC_NAMES)}")
    import evaluate

    return evaluate.load(str(MODULES_DIR / name / f"{name}.py"))
