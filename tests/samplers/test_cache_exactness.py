"""Prefix and dual KV caches decode exactly the cache-free tokens on block-causal models, for every prompt length.

`generate` aligns the model's attention blocks with its generation blocks (they start at the prompt's end), so the
keys/values a cache keeps never depend on positions decoded later, whatever the prompt length.
"""

import pytest
import torch

from tests.samplers.test_generate import reference_llada_greedy
from textdiff.samplers import generate

BLOCK = 8
RULES = {
    "low_confidence": {"sampler": "low_confidence", "steps": 8},  # 2 tokens per step
    "threshold": {"sampler": "threshold", "steps": 2, "threshold": 0.1},  # dynamic: steps until the block is full
}


@pytest.fixture(scope="module")
def block_causal_model():
    from tests.conftest import tiny_config
    from textdiff import TextDiffModel

    torch.manual_seed(1)  # a seed whose decodes depend on context: before alignment 21 of the 48 cached runs differed
    return TextDiffModel(tiny_config(attention_mode="block_causal", block_size=BLOCK)).eval()


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("prompt_length", range(1, 13))
def test_prefix_and_dual_caches_equal_cache_free_decoding(block_causal_model, rule, prompt_length):
    prompt = torch.randint(0, 66, (2, prompt_length), generator=torch.Generator().manual_seed(prompt_length))
    options = {"gen_length": 16, "block_length": 8, **RULES[rule]}
    reference = generate(block_causal_model, prompt, **options)
    for cache in ("prefix", "dual"):
        out = generate(block_causal_model, prompt, cache=cache, **options)
        assert torch.equal(out.sequences, reference.sequences), (cache, prompt_length)
        assert out.nfe == reference.nfe


@pytest.mark.parametrize("loop_option", [{"logit_shift": True}, {"cfg_scale": 1.0}], ids=["logit_shift", "cfg"])
@pytest.mark.parametrize("prompt_length", [5, 12])
def test_caches_stay_exact_with_the_logit_shift_and_text_cfg(block_causal_model, loop_option, prompt_length):
    prompt = torch.randint(0, 66, (2, prompt_length), generator=torch.Generator().manual_seed(prompt_length))
    options = {"gen_length": 16, "steps": 8, "block_length": 8, **loop_option}
    reference = generate(block_causal_model, prompt, **options)
    for cache in ("prefix", "dual"):
        assert torch.equal(generate(block_causal_model, prompt, cache=cache, **options).sequences,
                           reference.sequences), cache

def test_cache_free_decoding_uses_blocks_that_start_at_the_prompt_end(block_causal_model):
    """The semantics the caches reproduce: LLaDA's greedy loop on the model called with an explicit block-causal
    mask whose blocks are [P + 8k, P + 8k + 8) for every integer k (the prompt's first block is partial)."""

    class AlignedBlocks(torch.nn.Module):
        def __init__(self, model, prompt_length):
            super().__init__()
            self.model, self.prompt_length = model, prompt_length

        def forward(self, x):
            blocks = torch.div(torch.arange(x.shape[1]) - self.prompt_length, BLOCK, rounding_mode="floor")
            mask = blocks[None, :] <= blocks[:, None]  # [L, L] True = may attend
            return self.model(x, attention_mask=mask[None, None])

    for prompt_length in (5, 12):
        prompt = torch.randint(0, 66, (2, prompt_length), generator=torch.Generator().manual_seed(prompt_length))
        out = generate(block_causal_model, prompt, gen_length=16, steps=16, block_length=8)
        reference = reference_llada_greedy(AlignedBlocks(block_causal_model, prompt_length), prompt, 16, 16, 8,
                                           mask_id=66)
        assert torch.equal(out.sequences, reference), prompt_length


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_block_causal_left_padded_batch_equals_one_by_one(block_causal_model, cache):
    """Blocks are counted from the prompt's end, which left padding does not move: each row decodes as if alone."""
    prompts = [torch.randint(0, 65, (n,), generator=torch.Generator().manual_seed(n)) for n in (3, 9, 5)]
    width = max(len(p) for p in prompts)
    batch = torch.full((3, width), 65)
    attention = torch.zeros(3, width, dtype=torch.long)
    for r, p in enumerate(prompts):
        batch[r, width - len(p):], attention[r, width - len(p):] = p, 1
    # generation blocks of 2 attention blocks each
    options = {"gen_length": 32, "steps": 16, "block_length": 16, "cache": cache}
    out = generate(block_causal_model, batch, attention_mask=attention, **options)
    for r, p in enumerate(prompts):
        alone = generate(block_causal_model, p[None], **options)
        assert torch.equal(out.sequences[r, width:], alone.sequences[0, len(p):]), r
