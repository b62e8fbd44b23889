"""`generate()`: the one loop (blocks outer, timesteps inner) that drives every masked-diffusion step rule,
with text CFG, EOS handling, the logit shift of AR-adapted models, left-padded batches and three KV-cache modes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from textdiff.modeling.cache import KVCache
from textdiff.samplers.base import GenerateOutput
from textdiff.samplers.guidance import ClassifierFreeGuidance
from textdiff.samplers.masked import MaskedSampler, num_transfer_tokens
from textdiff.samplers.registry import build_sampler

CACHE_MODES = ("none", "prefix", "dual")


class _Denoiser:
    """One forward pass per step over the smallest region the cache mode allows.

    - "none": the whole canvas every step.
    - "prefix" (Fast-dLLM PrefixCache): at a block's first step the whole canvas runs and the keys/values of the
      positions before the block are kept; later steps run only [block_start, end). Exact for block-causal
      models (the prefix never attends to later positions), approximate for bidirectional ones.
    - "dual" (Fast-dLLM DualCache): the block's first step caches every position; later steps recompute only
      the block and overwrite its slice, reusing the (stale) masked suffix.
    With the logit shift the region starts one position early: position i is scored by the hidden state at i-1.
    """

    def __init__(self, model, mode: str, attention_mask, position_ids, shift: bool, cfg_scale: float,
                 prompt_length: int, mask_token_id: int, suppress_token_ids: list[int]):
        self.model, self.mode, self.shift, self.cfg_scale = model, mode, shift, cfg_scale
        self.prompt_length, self.mask_token_id = prompt_length, mask_token_id
        self.suppress_token_ids = suppress_token_ids
        # LLaDA's cfg is the "original" CFG convention (= standard scale cfg + 1); the same guider serves images
        self.guidance = ClassifierFreeGuidance(scale=cfg_scale, formulation="original")
        double = (lambda z: torch.cat([z, z])) if cfg_scale > 0 else (lambda z: z)
        self.attention_mask = None if attention_mask is None else double(attention_mask)
        self.position_ids = None if position_ids is None else double(position_ids)
        self.cache: KVCache | None = None
        self.calls = 0

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg_scale <= 0:
            return x
        # text CFG (LLaDA / SMDM): the unconditional pass sees the prompt replaced by [MASK]
        unconditional = x.clone()
        unconditional[:, : self.prompt_length] = self.mask_token_id
        return torch.cat([x, unconditional])

    def __call__(self, x: torch.Tensor, block_start: int, block_end: int, first_step: bool) -> tuple[torch.Tensor, int]:
        """Logits [B, end - lo, V] for canvas positions [lo, end) and lo, ready for a step rule."""
        lo = block_start - 1 if self.shift else block_start
        inputs = self._inputs(x)
        pos = self.position_ids
        if self.mode == "none" or first_step:
            if self.mode != "none":
                self.cache = KVCache(self.model.config.num_hidden_layers)
            out = self.model(inputs, attention_mask=self.attention_mask, position_ids=pos,
                             cache=self.cache, use_cache=self.cache is not None)
            if self.mode == "prefix":
                self.cache.crop(lo)
            logits, region_start = out.logits[:, lo:], lo
        elif self.mode == "prefix":
            out = self.model(inputs[:, lo:], attention_mask=self.attention_mask,
                             position_ids=None if pos is None else pos[:, lo:], cache=self.cache, use_cache=True)
            self.cache.crop(lo)
            logits, region_start = out.logits, lo
        else:  # dual
            self.cache.write_at = lo
            out = self.model(inputs[:, lo:block_end], attention_mask=self.attention_mask,
                             position_ids=None if pos is None else pos[:, lo:block_end], cache=self.cache,
                             use_cache=True)
            self.cache.write_at = None
            logits, region_start = out.logits, lo
        self.calls += 1
        if self.cfg_scale > 0:
            cond, uncond = logits.chunk(2)
            logits = self.guidance(cond, uncond)  # un + (cfg_scale + 1)(cond - un)
        if self.shift:
            # logits at i predict token i+1: the region's first row only feeds the next position
            logits, region_start = logits[:, :-1], region_start + 1
        if self.suppress_token_ids:
            logits = logits.clone()
            logits[..., self.suppress_token_ids] = -torch.inf
        return logits, region_start


def _validate(model, input_ids, gen_length, steps, block_length, cache, mask_id) -> int:
    if mask_id is None:
        raise ValueError("the model has no mask_token_id: pass mask_token_id=")
    if cache not in CACHE_MODES:
        raise ValueError(f"unknown cache mode {cache!r}; valid: {', '.join(CACHE_MODES)}")
    if block_length <= 0 or gen_length <= 0:
        raise ValueError(f"gen_length ({gen_length}) and block_length ({block_length}) must be positive")
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} is not a multiple of block_length {block_length}")
    num_blocks = gen_length // block_length
    if steps < num_blocks or steps % num_blocks:
        raise ValueError(f"steps {steps} is not divisible into {num_blocks} blocks of block_length {block_length}")
    context = model.config.max_position_embeddings
    if input_ids.shape[1] + gen_length > context:
        raise ValueError(
            f"prompt ({input_ids.shape[1]}) + gen_length ({gen_length}) exceeds the model's context {context}"
        )
    return num_blocks


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    *,
    gen_length: int,
    steps: int,
    block_length: int,
    sampler: str | MaskedSampler = "low_confidence",
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    cache: str = "none",
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | None = None,
    stop_at_eos: bool = False,
    suppress_eos: bool = False,
    logit_shift: bool | None = None,
    mask_token_id: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
    **sampler_options,
) -> GenerateOutput:
    """Masked-diffusion generation with semi-autoregressive blocks: LLaDA's `generate()` semantics, any rule.

    Args:
        input_ids: [B, P] prompts; left-pad a batch of different lengths and pass `attention_mask` [B, P]
            (0 on padding) — the result equals decoding each prompt alone.
        gen_length / block_length / steps: blocks of `block_length` are decoded left to right, `steps //
            num_blocks` steps each (dynamic rules such as `threshold` step until the block is full instead).
        sampler: a rule name (see `textdiff.samplers.SAMPLERS`) or a `MaskedSampler`; `sampler_options` go to
            its constructor (`threshold=0.9`, `factor=1.0`, `alg_temp=0.1`, ...).
        temperature: 0 is greedy; > 0 samples through float64 Gumbel noise.
        cfg_scale: LLaDA text CFG, logits = un + (cfg_scale + 1)(cond - un), the unconditional pass seeing the
            prompt replaced by [MASK]; cfg_scale = 0 is the conditional pass alone.
        cache: "none" | "prefix" | "dual" (see `_Denoiser`).
        eos_token_id / stop_at_eos / suppress_eos: stop once every row has generated EOS and all blocks before it
            are decoded (the rest of the canvas becomes EOS); or forbid EOS altogether (LLaDA `logits_eos_inf`).
        logit_shift: position i predicts token i+1 (AR-adapted models); default `model.config.logit_shift`.
        callback: called as callback(block, step, canvas) after every step (e.g. to print the canvas).

    Returns `.sequences` [B, P + gen_length] and `.nfe`, the number of denoiser evaluations per sequence
    (a CFG step counts 2).
    """
    mask_id = model.config.mask_token_id if mask_token_id is None else mask_token_id
    num_blocks = _validate(model, input_ids, gen_length, steps, block_length, cache, mask_id)
    eos_id = model.config.eos_token_id if eos_token_id is None else eos_token_id
    if (stop_at_eos or suppress_eos) and eos_id is None:
        raise ValueError("stop_at_eos / suppress_eos need an eos_token_id (the model config has none)")
    shift = model.config.logit_shift if logit_shift is None else logit_shift
    if shift and input_ids.shape[1] == 0:
        raise ValueError("logit_shift needs a prompt of at least one token (position 0 predicts position 1)")
    if isinstance(sampler, str):
        sampler = build_sampler(sampler, mask_token_id=mask_id, temperature=temperature, generator=generator,
                                **sampler_options)
    elif sampler_options:
        raise ValueError(f"sampler options {sorted(sampler_options)} only apply when `sampler` is a name")
    steps_per_block = steps // num_blocks
    sampler.set_timesteps(steps_per_block)

    # 1. canvas: prompt then gen_length [MASK]; left padding gets positions that make it invisible
    B, P = input_ids.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=input_ids.device)
    x[:, :P] = input_ids
    position_ids = None
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, gen_length)], dim=1)
        if bool(attention_mask.all()):
            attention_mask = None
        else:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    denoiser = _Denoiser(model, cache, attention_mask, position_ids, shift, cfg_scale, P, mask_id,
                         [eos_id] if suppress_eos else [])

    # 2. blocks outer, timesteps inner
    for b in range(num_blocks):
        block_start, block_end = P + b * block_length, P + (b + 1) * block_length
        transfer = num_transfer_tokens((x[:, block_start:block_end] == mask_id).sum(1), steps_per_block)
        i = 0
        while (x[:, block_start:block_end] == mask_id).any():
            if not sampler.dynamic and i >= steps_per_block:
                break
            t = sampler.timesteps[min(i, steps_per_block - 1)]
            logits, lo = denoiser(x, block_start, block_end, first_step=i == 0)
            hi = lo + logits.shape[1]
            out = sampler.step(logits, t, x[:, lo:hi], block_start=block_start - lo, block_end=block_end - lo,
                               num_transfer=None if sampler.dynamic else transfer[:, i])
            if sampler.dynamic and not (out.prev_sample != x[:, lo:hi]).any():  # would loop forever
                raise RuntimeError(f"{type(sampler).__name__} revealed no token at block {b} step {i}")
            x[:, lo:hi] = out.prev_sample
            i += 1
            if callback is not None:
                callback(b, i, x)
        # 3. stop at EOS: every row has EOS in its decoded text, so the remaining blocks are padding
        if stop_at_eos and b < num_blocks - 1 and bool((x[:, P:block_end] == eos_id).any(dim=1).all()):
            x[:, block_end:] = eos_id
            break
    multiplier = 2 if cfg_scale > 0 else 1
    return GenerateOutput(sequences=x, nfe=denoiser.calls * multiplier)


@torch.no_grad()
def generate_autoregressive(model, input_ids: torch.Tensor, *, gen_length: int,
                            eos_token_id: int | None = None) -> GenerateOutput:
    """Greedy AR decoding with the trunk's KV cache (a causal-mode model): prefill the prompt, then 1 token/step.
    Stops early once every row has produced `eos_token_id`."""
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
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(gen_length - 1):
        tokens.append(next_token)
        if eos_token_id is not None:
            finished |= next_token[:, 0] == eos_token_id
            if bool(finished.all()):
                break
        out = model(next_token, cache=cache, use_cache=True)
        nfe += 1
        next_token = out.logits[:, -1].argmax(-1, keepdim=True)
    else:
        tokens.append(next_token)
    return GenerateOutput(sequences=torch.cat(tokens, dim=1), nfe=nfe)
