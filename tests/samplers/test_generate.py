"""The LLaDA low-confidence loop: transfer counts, a plain reference loop, and input validation."""

import pytest
import torch
import torch.nn.functional as F

from textdiff.samplers import generate, generate_autoregressive, num_transfer_tokens


def test_num_transfer_tokens_matches_llada():
    assert num_transfer_tokens(torch.tensor([32]), 5).tolist() == [[7, 7, 6, 6, 6]]
    assert num_transfer_tokens(torch.tensor([8, 3]), 4).tolist() == [[2, 2, 2, 2], [1, 1, 1, 0]]


@torch.no_grad()
def reference_llada_greedy(model, prompt, gen_length, steps, block_length, mask_id):
    """LLaDA generate() at temperature 0, written independently as plain loops over blocks, steps and rows."""
    x = torch.cat([prompt, torch.full((prompt.shape[0], gen_length), mask_id)], dim=1)
    P, num_blocks = prompt.shape[1], gen_length // block_length
    per_block = steps // num_blocks
    for b in range(num_blocks):
        lo, hi = P + b * block_length, P + (b + 1) * block_length
        n_masked = [(x[r, lo:hi] == mask_id).sum().item() for r in range(x.shape[0])]
        for s in range(per_block):
            logits = model(x).logits
            probs = F.softmax(logits, dim=-1)
            for r in range(x.shape[0]):
                k = n_masked[r] // per_block + (1 if s < n_masked[r] % per_block else 0)
                candidates = []
                for i in range(lo, hi):
                    if x[r, i] == mask_id:
                        tok = int(logits[r, i].argmax())
                        candidates.append((float(probs[r, i, tok]), i, tok))
                candidates.sort(key=lambda c: -c[0])
                for _, i, tok in candidates[:k]:
                    x[r, i] = tok
    return x


@pytest.mark.parametrize("block_length", [4, 8])
def test_greedy_low_confidence_equals_reference_loop(tiny_model_factory, block_length):
    model = tiny_model_factory()
    prompt = torch.randint(0, 66, (2, 5))
    out = generate(model, prompt, gen_length=8, steps=8, block_length=block_length)
    ref = reference_llada_greedy(model, prompt, 8, 8, block_length, mask_id=66)
    assert torch.equal(out.sequences, ref)
    assert out.nfe == 8
    assert not (out.sequences == 66).any()


def test_cfg_scale_zero_is_the_conditional_pass(tiny_model_factory):
    model = tiny_model_factory()
    prompt = torch.randint(0, 66, (1, 5))
    a = generate(model, prompt, gen_length=8, steps=4, block_length=8).sequences
    b = generate(model, prompt, gen_length=8, steps=4, block_length=8, cfg_scale=0.0).sequences
    assert torch.equal(a, b)


def test_bad_generation_arguments_are_clear_errors(tiny_model_factory):
    model = tiny_model_factory(max_position_embeddings=16)
    prompt = torch.randint(0, 66, (1, 4))
    with pytest.raises(ValueError, match="not a multiple of block_length"):
        generate(model, prompt, gen_length=10, steps=4, block_length=4)
    with pytest.raises(ValueError, match="not divisible into 2 blocks"):
        generate(model, prompt, gen_length=8, steps=3, block_length=4)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        generate(model, prompt, gen_length=16, steps=4, block_length=4)
    with pytest.raises(ValueError, match="unknown remasking rule"):
        generate(model, prompt, gen_length=8, steps=4, block_length=4, sampler="sideways")


def test_autoregressive_greedy_with_cache_equals_recomputation(tiny_model_factory):
    model = tiny_model_factory(attention_mode="causal")
    prompt = torch.randint(0, 66, (2, 4))
    out = generate_autoregressive(model, prompt, gen_length=6)
    x = prompt
    for _ in range(6):
        x = torch.cat([x, model(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.sequences, x)
    assert out.nfe == 6
