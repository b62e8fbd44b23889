"""Moved to `textdiff.pipelines.visual` (image / video writers are a pipeline, not a step rule); this path
re-exports it for the importer that still uses it (textdiff/train/images.py)."""

from textdiff.pipelines.visual import dit_denoiser, sample_visual, save_image_grid, save_video

__all__ = ["dit_denoiser", "sample_visual", "save_image_grid", "save_video"]
