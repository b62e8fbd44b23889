"""Evaluation: the one task-evaluation path (prompts -> generate -> decode -> verify -> accuracy)."""

from pathlib import Path

from textdiff.evaluation.tasks import complete_prompts, evaluate_task

LM_EVAL_TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
"""the local lm-eval task YAMLs (pass as `--include_path`); `import textdiff.evaluation.lm_eval_adapter` registers
the "textdiff" model type."""

__all__ = ["LM_EVAL_TASKS_DIR", "complete_prompts", "evaluate_task"]
