"""`generate()`: the one loop (blocks outer, timesteps inner) that drives the masked-diffusion step rules."""

from __future__ import annotations

import torch

from textdiff.samplers.base import GenerateOutput
from textdiff.samplers.masked import RemaskingSampler, num_transfer_tokens


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    *,
    gen_length: int,
    steps: int,
    block_length: int,
    sampler: str | RemaskingSampler = "low_confidence",
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    attention_mask: torch.Tensor | None = None,
    mask_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> GenerateOutput:
    """Masked-diffusion generation with semi-autoregressive blocks, LLaDA's `generate()` semantics.

    input_ids [B, P] is the prompt; returns the prompt followed by `gen_length` generated tokens and the NFE.
    `cfg_scale` > 0 adds LLaDA's text CFG: the unconditional pass replaces the prompt by [MASK] and the logits
    become un + (cfg_scale + 1) * (cond - un).
    """
    mask_id = model.config.mask_token_id if mask_token_id is None else mask_token_id
    if mask_id is None:
        raise ValueError("the model has no mask_token_id: pass mask_token_id=")
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} is not a multiple of block_length {block_length}")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"steps {steps} is not divisible into {num_blocks} blocks of block_length {block_length}")
    B, P = input_ids.shape
    context = model.config.max_position_embeddings
    if P + gen_length > context:
        raise ValueError(f"prompt ({P}) + gen_length ({gen_length}) exceeds the model's context {context}")
    if isinstance(sampler, str):
        sampler = RemaskingSampler(mask_id, remasking=sampler, temperature=temperature, generator=generator)
    steps_per_block = steps // num_blocks
    sampler.set_timesteps(steps_per_block)

    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=input_ids.device)
    x[:, :P] = input_ids
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, gen_length)], dim=1)
    prompt_index = torch.zeros_like(x, dtype=torch.bool)
    prompt_index[:, :P] = True
    nfe = 0
    for b in range(num_blocks):
        block_start, block_end = P + b * block_length, P + (b + 1) * block_length
        block_masked = (x[:, block_start:block_end] == mask_id).sum(dim=1)  # [B]
        transfer = num_transfer_tokens(block_masked, steps_per_block)  # [B, steps_per_block]
        for i, t in enumerate(sampler.timesteps):
            if cfg_scale > 0:
                unconditional = torch.where(prompt_index, torch.full_like(x, mask_id), x)
                both = torch.cat([x, unconditional])
                both_mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
                cond, uncond = model(both, attention_mask=both_mask).logits.chunk(2)
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            else:
                logits = model(x, attention_mask=attention_mask).logits  # [B, L, V]
            nfe += 1
            x = sampler.step(logits, t, x, block_end=block_end, num_transfer=transfer[:, i]).prev_sample
    return GenerateOutput(sequences=x, nfe=nfe)


@torch.no_grad()
def generate_autoregressive(model, input_ids: torch.Tensor, *, gen_length: int,
                            eos_token_id: int | None = None) -> GenerateOutput:
    """Greedy AR decoding with the trunk's KV cache (a causal-mode model): prefill the prompt, then 1 token/step."""
    if model.config.attention_mode != "causal":
        raise ValueError("generate_autoregressive needs a causal-mode model (config.attention_mode='causal')")
    P = input_ids.shape[1]
    if P + gen_length > model.config.max_position_embeddings:
        raise ValueError(
            f"prompt ({P}) + gen_length ({gen_length}) exceeds the model's context {model.config.max_position_embeddings}"
        )
    out = model(input_ids, use_cache=True)
    cache, tokens, nfe = out.cache, [input_ids], 1
    next_token = out.logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]
    for _ in range(gen_length - 1):
        tokens.append(next_token)
        if eos_token_id is not None and bool((next_token == eos_token_id).all()):
            break
        out = model(next_token, cache=cache, use_cache=True)
        nfe += 1
        next_token = out.logits[:, -1].argmax(-1, keepdim=True)
    else:
        tokens.append(next_token)
    return GenerateOutput(sequences=torch.cat(tokens, dim=1), nfe=nfe)
