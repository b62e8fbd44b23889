"""`generate()`: the one loop (blocks outer, timesteps inner) that drives every masked-diffusion step rule,
with text CFG, EOS handling, the logit shift of AR-adapted models, left-padded batches and three KV-cache modes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from textdiff.modeling.cache import KVCache
from textdiff.samplers.base import GenerateOutput, LatentStep, SamplerState
from textdiff.samplers.guidance import ClassifierFreeGuidance
from textdiff.samplers.logits import check_sampling_controls, process_logits
from textdiff.samplers.masked import MaskedSampler
from textdiff.samplers.registry import build_sampler

CACHE_MODES = ("none", "prefix", "dual")


class _Denoiser:
    """One forward pass per step over the smallest window of the canvas the cache mode allows.

    - "none": the whole canvas every step.
    - "prefix" (Fast-dLLM PrefixCache): at a block's first step the whole canvas runs and the keys/values of the
      positions before the block are kept; later steps run only [block_start, end). Approximate for bidirectional
      models (the cached prefix attended to the block as it was at the block's first step).
    - "dual" (Fast-dLLM DualCache): the block's first step caches every position; later steps recompute only
      the block and overwrite its slice, reusing the (stale) masked suffix.
    A block-causal model is called with its attention blocks starting at the prompt's end (`block_offset=P`, with
    or without a cache), so a generation block whose length is a multiple of the model's `block_size` is a union
    of attention blocks: the prefix and the current block never attend to later positions, and both caches give
    exactly the cache-free tokens for every prompt length. Both then run only what the block needs (BD3-LM's
    cache): a block's first step runs the previous block, now finished, and the block on the cached past, later
    steps the block alone; nothing after the block is ever computed.
    With the logit shift the model's window starts one position early (position i is scored by the hidden state at
    i-1), and that first row is dropped: the logits always start at the block. Latents of the state (hybrid
    models) go to the model as `latents=`, windowed like the tokens.
    """

    def __init__(self, model, mode: str, attention_mask, position_ids, shift: bool, cfg_scale: float,
                 prompt_length: int, mask_token_id: int, suppress_token_ids: list[int], latents_at_mask: bool = False):
        self.model, self.mode, self.shift, self.cfg_scale = model, mode, shift, cfg_scale
        self.latents_at_mask = latents_at_mask  # hybrid (CADD): the latents enter only where the token is [MASK]
        self.prompt_length, self.mask_token_id = prompt_length, mask_token_id
        self.suppress_token_ids = suppress_token_ids
        # LLaDA's cfg is the "original" CFG convention (= standard scale cfg + 1); the same guider serves images
        self.guidance = ClassifierFreeGuidance(scale=cfg_scale, formulation="original")
        self.attention_mask = self._double(attention_mask)
        self.position_ids = self._double(position_ids)
        self.cache: KVCache | None = None
        self.calls = 0
        # only block-causal models get the offset: other models (and wrappers) keep their call signature
        self.block_causal = getattr(getattr(model, "config", None), "attention_mode", None) == "block_causal"
        self.block_options = {"block_offset": prompt_length} if self.block_causal else {}

    def _double(self, z: torch.Tensor | None) -> torch.Tensor | None:
        """Per-position inputs of the CFG batch [cond; uncond]: both passes share them."""
        return torch.cat([z, z]) if z is not None and self.cfg_scale > 0 else z

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg_scale <= 0:
            return x
        # text CFG (LLaDA / SMDM): the unconditional pass sees the prompt replaced by [MASK]
        unconditional = x.clone()
        unconditional[:, : self.prompt_length] = self.mask_token_id
        return torch.cat([x, unconditional])

    def _forward(self, tokens: torch.Tensor, latents: torch.Tensor | None, start: int, end: int | None,
                 positions: torch.Tensor | None = None, keys_end: int | None = None):
        """The model on canvas window [start, end) of the (CFG-batched) inputs; keys_end: the keys stop there (the
        cache holds no position after it), so the padding mask does too."""
        window = slice(start, end)
        extra = {} if latents is None else {"latents": latents[:, window]}  # models without latents never see it
        if positions is not None:
            extra["latent_positions"] = positions[:, window]
        attention_mask = self.attention_mask
        if keys_end is not None and attention_mask is not None:
            attention_mask = attention_mask[:, :keys_end]
        return self.model(tokens[:, window], attention_mask=attention_mask,
                          position_ids=None if self.position_ids is None else self.position_ids[:, window],
                          cache=self.cache, use_cache=self.cache is not None, **self.block_options, **extra)

    def __call__(self, state: SamplerState, block_start: int, block_end: int, first_step: bool) -> torch.Tensor:
        """Logits [B, end - block_start, V] for canvas positions [block_start, end), ready for a step rule (end is
        block_end in dual mode, the canvas end otherwise)."""
        lo = block_start - 1 if self.shift else block_start
        tokens, latents = self._inputs(state.tokens), self._double(state.latents)
        # [MASK] of the canvas itself: the CFG pass's masked prompt gets no latents
        positions = self._double(state.tokens == self.mask_token_id) if self.latents_at_mask else None
        if self.block_causal and self.mode != "none":
            # exact and minimal: the cache ends at the previous call's window start (the last block's start, or lo)
            if self.cache is None:
                self.cache = KVCache(self.model.config.num_hidden_layers)
            start = self.cache.seq_len if first_step else lo
            out = self._forward(tokens, latents, start, block_end, positions, keys_end=block_end)
            self.cache.crop(lo)
            logits = out.logits[:, lo - start:]
        elif self.mode == "none" or first_step:
            if self.mode != "none":
                self.cache = KVCache(self.model.config.num_hidden_layers)
            out = self._forward(tokens, latents, 0, None, positions)
            if self.mode == "prefix":
                self.cache.crop(lo)
            logits = out.logits[:, lo:]
        elif self.mode == "prefix":
            out = self._forward(tokens, latents, lo, None, positions)
            self.cache.crop(lo)
            logits = out.logits
        else:  # dual
            self.cache.write_at = lo
            out = self._forward(tokens, latents, lo, block_end, positions)
            self.cache.write_at = None
            logits = out.logits
        self.calls += 1
        if self.cfg_scale > 0:
            cond, uncond = logits.chunk(2)
            logits = self.guidance(cond, uncond)  # un + (cfg_scale + 1)(cond - un)
        if self.shift:
            # logits at i predict token i+1: the window's first row only feeds the next position
            logits = logits[:, :-1]
        if self.suppress_token_ids:
            logits = logits.clone()
            logits[..., self.suppress_token_ids] = -torch.inf
        return logits


def check_decoding_schedule(gen_length: int, steps: int, block_length: int, *,
                            names: tuple[str, str, str] = ("gen_length", "steps", "block_length")) -> int:
    """The schedule `generate` decodes by: `gen_length` in blocks of `block_length`, `steps` split evenly over the
    blocks, and at least one token revealed per step (more steps than tokens would be silently fewer passes).
    Returns the number of blocks; raises ValueError naming the argument (as `names` spells it: the recipe and the
    CLI check their own keys with the same rule)."""
    gen_name, steps_name, block_name = names
    for name, value in ((gen_name, gen_length), (steps_name, steps), (block_name, block_length)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if gen_length % block_length:
        raise ValueError(f"{gen_name} {gen_length} is not a multiple of {block_name} {block_length}")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"{steps_name} {steps} is not divisible into {num_blocks} blocks of {block_name} "
                         f"{block_length} (use a multiple of {num_blocks})")
    if steps > gen_length:
        raise ValueError(f"{steps_name} {steps} exceeds {gen_name} {gen_length}: every step reveals at least one "
                         f"token, so at most {gen_length} steps")
    return num_blocks


def _validate(model, input_ids, gen_length, steps, block_length, cache, mask_id, temperature, cfg_scale) -> int:
    if mask_id is None:
        raise ValueError("the model has no mask_token_id: pass mask_token_id=")
    if cache not in CACHE_MODES:
        raise ValueError(f"unknown cache mode {cache!r}; valid: {', '.join(CACHE_MODES)}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0 (0 = no guidance), got {cfg_scale}")
    num_blocks = check_decoding_schedule(gen_length, steps, block_length)
    if getattr(model.config, "attention_mode", None) == "block_causal" and block_length % model.config.block_size:
        # refused, not warned: a partial attention block would see masks it never saw in training (bd3) and
        # make the caches inexact
        raise ValueError(f"block_length {block_length} is not a multiple of the block-causal model's block_size "
                         f"{model.config.block_size}: decode whole attention blocks")
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
    latents: torch.Tensor | None = None,
    latent_step: LatentStep | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
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
        cache: "none" | "prefix" | "dual" (see `_Denoiser`): exact on block-causal models, whose `block_length`
            must be a multiple of `config.block_size` (attention blocks start at the prompt's end), approximate
            on bidirectional ones.
        eos_token_id / stop_at_eos / suppress_eos: stop once every row has generated EOS and all blocks before it
            are decoded (the rest of the canvas becomes EOS); or forbid EOS altogether (LLaDA `logits_eos_inf`).
        logit_shift: position i predicts token i+1 (AR-adapted models); default `model.config.logit_shift`.
        callback: called as callback(block, step, canvas) after every step (e.g. to print the canvas).
        latents: [B, P + gen_length, D] continuous latents carried with the canvas (hybrid / CADD models): the model
            is called with `latents=` (windowed like the tokens) and the loop's `SamplerState` carries them.
        latent_step: a `LatentStep` (CADD) that moves the latents at every step of the rule (needs `latents`); the
            model then reads them only at [MASK] positions (`latent_positions=`).
        top_k / top_p / repetition_penalty: sampling controls on every step's logits before the rule
            (`textdiff.samplers.logits`): keep the k most likely tokens / the nucleus of mass p; penalise (CTRL)
            every token already on the canvas. None / None / 1.0 are off.

    Returns `.sequences` [B, P + gen_length] and `.nfe`, the number of denoiser evaluations per sequence
    (a CFG step counts 2), and `.latents` (the carried latents, or None).
    """
    mask_id = model.config.mask_token_id if mask_token_id is None else mask_token_id
    num_blocks = _validate(model, input_ids, gen_length, steps, block_length, cache, mask_id, temperature,
                           cfg_scale)
    check_sampling_controls(top_k, top_p, repetition_penalty)
    controls = top_k is not None or top_p is not None or repetition_penalty != 1.0
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
    if getattr(sampler, "kind", "masked") != "masked":
        raise ValueError(f"generate drives masked step rules; {type(sampler).__name__} is a {sampler.kind} one "
                         "(use sample_continuous)")
    steps_per_block = steps // num_blocks
    sampler.set_timesteps(steps_per_block)
    rule_temperature = getattr(sampler, "temperature", temperature)  # the nucleus is taken at the rule's temperature

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
    if latents is not None and tuple(latents.shape[:2]) != tuple(x.shape):
        raise ValueError(f"latents {tuple(latents.shape)} must be [B, P + gen_length, D] = [{B}, {P + gen_length}, D]")
    if latent_step is not None and latents is None:
        raise ValueError("latent_step= moves the latents: pass latents= too")
    padding = None if attention_mask is None else attention_mask == 0  # [B, P + gen_length]: never "on the canvas"
    # the state the rules step on; x is its token canvas, updated in place
    state = SamplerState(x, None if latents is None else latents.clone())
    denoiser = _Denoiser(model, cache, attention_mask, position_ids, shift, cfg_scale, P, mask_id,
                         [eos_id] if suppress_eos else [], latents_at_mask=latent_step is not None)

    # 2. blocks outer, timesteps inner: the rule steps on the window the denoiser scored, which starts at the block
    for b in range(num_blocks):
        block_start, block_end = P + b * block_length, P + (b + 1) * block_length
        sampler.set_region(0, block_length, state.narrow(block_start))
        # count-based rules read step i's column of the reveal counts: handed over directly, the rule need not look
        # t up in its timesteps at every step (same column: t is timesteps[i] for i < steps_per_block)
        counts = None if sampler.dynamic else sampler.region.num_transfer.unbind(1)
        i = 0
        while (x[:, block_start:block_end] == mask_id).any():
            if not sampler.dynamic and i >= steps_per_block:
                break
            t = sampler.timesteps[min(i, steps_per_block - 1)]
            logits = denoiser(state, block_start, block_end, first_step=i == 0)  # [B, end - block_start, V]
            if controls:
                logits = process_logits(logits, x, mask_token_id=mask_id, top_k=top_k, top_p=top_p,
                                        penalty=repetition_penalty, temperature=rule_temperature, padding=padding)
            window = state.narrow(block_start, block_start + logits.shape[1])
            if latent_step is not None:
                level = (x[:, block_start:block_end] == mask_id).float().mean(1)  # [B] noise level of each row
                logits = latent_step.logits(logits, level)
            out = sampler.step(logits, t, window, num_transfer=None if counts is None else counts[i])
            if sampler.dynamic and not (out.prev_sample.tokens != window.tokens).any():  # would loop forever
                raise RuntimeError(f"{type(sampler).__name__} revealed no token at block {b} step {i}")
            if latent_step is not None:
                after = out.prev_sample
                level_after = (after.tokens[:, :block_length] == mask_id).float().mean(1)  # [B]
                after.latents = latent_step.step(logits, window, after, level, level_after, block_length)
            state.write(block_start, out.prev_sample)
            i += 1
            if callback is not None:
                callback(b, i, x)
        # 3. stop at EOS: every row has EOS in its decoded text, so the remaining blocks are padding
        if stop_at_eos and b < num_blocks - 1 and bool((x[:, P:block_end] == eos_id).any(dim=1).all()):
            x[:, block_end:] = eos_id
            break
    multiplier = 2 if cfg_scale > 0 else 1
    return GenerateOutput(sequences=x, nfe=denoiser.calls * multiplier, latents=state.latents)


@torch.no_grad()
def generate_autoregressive(model, input_ids: torch.Tensor, *, gen_length: int, eos_token_id: int | None = None,
                            temperature: float = 0.0, generator: torch.Generator | None = None) -> GenerateOutput:
    """Greedy AR decoding with the trunk's KV cache (a causal-mode model): prefill the prompt, then 1 token/step;
    temperature > 0 samples softmax(logits / temperature) instead. Stops early once every row has produced
    `eos_token_id`."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")

    def pick(logits: torch.Tensor) -> torch.Tensor:  # [B, V] -> [B, 1]
        if temperature == 0:
            return logits.argmax(-1, keepdim=True)
        return torch.multinomial(torch.softmax(logits.float() / temperature, -1), 1, generator=generator)

    if model.config.attention_mode != "causal":
        raise ValueError("generate_autoregressive needs a causal-mode model (config.attention_mode='causal')")
    P = input_ids.shape[1]
    if gen_length < 1:
        raise ValueError(f"gen_length must be >= 1, got {gen_length}")
    if P + gen_length > model.config.max_position_embeddings:
        raise ValueError(
            f"prompt ({P}) + gen_length ({gen_length}) exceeds the model's context {model.config.max_position_embeddings}"
        )
    out = model(input_ids, use_cache=True)
    cache, tokens, nfe = out.cache, [input_ids], 1
    next_token = pick(out.logits[:, -1])  # [B, 1]
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(gen_length - 1):
        tokens.append(next_token)
        if eos_token_id is not None:
            finished |= next_token[:, 0] == eos_token_id
            if bool(finished.all()):
                break
        out = model(next_token, cache=cache, use_cache=True)
        nfe += 1
        next_token = pick(out.logits[:, -1])
    else:
        tokens.append(next_token)
    return GenerateOutput(sequences=torch.cat(tokens, dim=1), nfe=nfe)
