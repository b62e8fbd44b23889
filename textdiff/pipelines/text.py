"""Prompt strings in, generated strings out: the glue between a tokenizer and the generation loops."""

from __future__ import annotations

import torch

from textdiff.data import SFTCollator
from textdiff.samplers.generate import generate, generate_autoregressive


def left_pad(rows: list[list[int]], pad_token_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows of different lengths as one left-padded batch, the layout `textdiff.generate` decodes (and TRL
    scores) prompts in: returns (input_ids [B, P], attention_mask [B, P], 0 on padding)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long, device=device)  # [B, P]
    attention_mask = torch.zeros_like(input_ids)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long, device=device)
        attention_mask[i, width - len(r) :] = 1
    return input_ids, attention_mask


def decode_completion(tokenizer, generated: list[int], mask_token_id: int | None = None) -> str:
    """Text of generated ids: cut at the first EOS (what follows is padding), drop any [MASK] left over."""
    eos = tokenizer.eos_token_id
    if eos is not None and eos in generated:
        generated = generated[: generated.index(eos)]
    return tokenizer.decode([i for i in generated if i != mask_token_id])


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
        completion = decode_completion(tokenizer, out.sequences[0, ids.shape[1]:].tolist(), model.config.mask_token_id)
        results.append({"prompt": prompt, "completion": completion, "nfe": out.nfe})
    model.train(was_training)
    return results
