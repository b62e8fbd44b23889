"""Prompt strings in, generated strings out: the glue between a tokenizer and the generation loops."""

from __future__ import annotations

import torch

from textdiff.data import SFTCollator
from textdiff.samplers.generate import generate, generate_autoregressive


def _cut_at_eos(ids: list[int], eos_token_id: int | None, mask_token_id: int | None) -> list[int]:
    if eos_token_id is not None and eos_token_id in ids:
        ids = ids[: ids.index(eos_token_id)]
    return [i for i in ids if i != mask_token_id]


def sample_text(
    model,
    tokenizer,
    prompts: list[str],
    *,
    gen_length: int = 64,
    steps: int = 64,
    block_length: int = 32,
    temperature: float = 0.0,
    use_chat_template: bool | None = None,
    **generate_options,
) -> list[dict]:
    """Generate a completion per prompt (one at a time) with the model's own decoder: masked diffusion with
    LLaDA low-confidence remasking, or greedy KV-cached decoding for a causal model. Prompts are encoded exactly
    as the SFT collator encodes them, so SFT'd models see the format they were trained on. `generate_options`
    (sampler, cache, cfg_scale, stop_at_eos, callback, rule options, ...) go to `textdiff.generate`."""
    encoder = SFTCollator(tokenizer, max_length=model.config.max_position_embeddings, use_chat_template=use_chat_template)
    was_training = model.training
    model.eval()
    results = []
    for prompt in prompts:
        ids = torch.tensor([encoder.encode_prompt(prompt)], device=model.device)  # [1, P]
        if model.config.attention_mode == "causal":
            out = generate_autoregressive(model, ids, gen_length=gen_length, eos_token_id=tokenizer.eos_token_id)
        else:
            out = generate(model, ids, gen_length=gen_length, steps=steps, block_length=block_length,
                           temperature=temperature, **generate_options)
        completion = _cut_at_eos(out.sequences[0, ids.shape[1]:].tolist(), tokenizer.eos_token_id,
                                 model.config.mask_token_id)
        results.append({"prompt": prompt, "completion": tokenizer.decode(completion), "nfe": out.nfe})
    model.train(was_training)
    return results
