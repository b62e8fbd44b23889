"""Pipelines: the glue around the sampling loops — prompts in, text / images / videos out.

`text`: tokenizer glue (left-padded prompt batches, prompt -> `textdiff.generate` -> decoded completion).
`visual`: caption encoder -> `sample_continuous` -> PNG grids, GIFs and frame strips.
Step rules and loops stay in `textdiff.samplers` and never import this package. Each also holds the
`textdiff sample` command of its kind (`sample_cli`), which the families call.
"""
