"""Prompts -> generate -> decode -> verify -> accuracy: the one path that training-time task evaluation, RL's
held-out curves and every `eval/` benchmark score a model on a verifiable task with.

Prompts are encoded exactly as the SFT collator encodes them (so an SFT'd model sees its training format),
decoded in left-padded batches (identical to decoding one by one; tested), cut at EOS and checked by the task's
own verifier. Causal (AR) checkpoints decode greedily with the KV cache, one prompt at a time (`decode_rows`).
"""

from __future__ import annotations

import torch

from textdiff.data import SFTCollator
from textdiff.data.tasks import Problem, Task
from textdiff.pipelines.text import decode_rows

__all__ = ["complete_prompts", "evaluate_task"]


@torch.no_grad()
def complete_prompts(
    model,
    tokenizer,
    prompts: list[str],
    *,
    gen_length: int,
    steps: int,
    block_length: int,
    samples_per_prompt: int = 1,
    batch_size: int = 64,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    **generate_options,
) -> list[list[str]]:
    """`samples_per_prompt` completions of every prompt (a list per prompt), `batch_size` rows per generate call.
    `generate_options` (sampler, cache, threshold, ...) go to `textdiff.generate`."""
    was_training = model.training
    model.eval()
    encoder = SFTCollator(tokenizer, max_length=model.config.max_position_embeddings)
    rows = [encoder.encode_prompt(p) for p in prompts for _ in range(samples_per_prompt)]
    texts = []
    for start in range(0, len(rows), batch_size):
        texts += decode_rows(model, tokenizer, rows[start : start + batch_size], gen_length=gen_length, steps=steps,
                             block_length=block_length, temperature=temperature, generator=generator,
                             **generate_options)[0]
    model.train(was_training)
    return [texts[i : i + samples_per_prompt] for i in range(0, len(texts), samples_per_prompt)]


def evaluate_task(
    model,
    tokenizer,
    task: Task,
    problems: list[Problem],
    *,
    gen_length: int,
    steps: int,
    block_length: int,
    batch_size: int = 64,
    **generate_options,
) -> dict:
    """Greedy exact-match accuracy of `problems` (and the task's mean partial score), with the first 8 examples."""
    if not problems:
        raise ValueError("evaluate_task needs at least one problem")
    completions = complete_prompts(model, tokenizer, [p.prompt for p in problems], gen_length=gen_length,
                                   steps=steps, block_length=block_length, batch_size=batch_size, **generate_options)
    correct, scores, examples = [], [], []
    for p, (completion,) in zip(problems, completions):
        ok = task.verify(p, completion)
        correct.append(ok)
        scores.append(task.score(p, completion))
        if len(examples) < 8:
            examples.append({"prompt": p.prompt, "answer": p.answer, "completion": completion, "correct": ok})
    return {
        "accuracy": sum(correct) / len(correct),
        "mean_reward": sum(scores) / len(scores),
        "problems": len(problems),
        "decoding": {"gen_length": gen_length, "steps": steps, "block_length": block_length,
                     "temperature": generate_options.get("temperature", 0.0)},
        "examples": examples,
    }
