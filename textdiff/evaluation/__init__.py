"""Evaluation: the one task-evaluation path (prompts -> generate -> decode -> verify -> accuracy)."""

from textdiff.evaluation.tasks import complete_prompts, evaluate_task

__all__ = ["complete_prompts", "evaluate_task"]
