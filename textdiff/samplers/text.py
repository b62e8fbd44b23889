"""Moved to `textdiff.pipelines.text` (tokenizer glue is a pipeline, not a step rule); this path re-exports it for
the importers that still use it (tests/test_cli.py, tests/test_rl_trainer.py)."""

from textdiff.pipelines.text import decode_completion, left_pad, sample_text

__all__ = ["decode_completion", "left_pad", "sample_text"]
