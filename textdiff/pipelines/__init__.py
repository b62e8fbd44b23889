"""Pipelines: the glue around the sampling loops — prompts in, text / images / videos out.

`text`: tokenizer glue (left-padded prompt batches, prompt -> `textdiff.generate` -> decoded completion).
`visual`: caption encoder -> `sample_continuous` -> PNG grids, GIFs and frame strips.
Step rules and loops stay in `textdiff.samplers` and never import this package; the old paths `samplers.text` /
`samplers.visual` are re-export shims until their last importers move.
"""
