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
    with pytest.raises(ValueError, match="unknown sampler"):
        generate(model, prompt, gen_length=8, steps=4, block_length=4, sampler="sideways")


def test_batch_prompts_longer_than_the_context_are_one_clear_line(tiny_model_factory):
    """A left-padded batch whose padded prompt length + gen_length passes the context: one ValueError naming both
    lengths and the context, from the masked loop and the AR loop alike (never a torch traceback)."""
    model = tiny_model_factory(max_position_embeddings=16)
    prompts = torch.randint(2, 66, (3, 12))
    attention_mask = torch.ones_like(prompts)
    attention_mask[1, :5] = 0  # left padding: the padded width is what occupies the context
    with pytest.raises(ValueError, match=r"^prompt \(12\) \+ gen_length \(8\) exceeds the model's context 16$"):
        generate(model, prompts, attention_mask=attention_mask, gen_length=8, steps=8, block_length=8)
    causal = tiny_model_factory(max_position_embeddings=16, attention_mode="causal")
    with pytest.raises(ValueError, match=r"^prompt \(12\) \+ gen_length \(8\) exceeds the model's context 16$"):
        generate_autoregressive(causal, prompts, gen_length=8)


def test_autoregressive_greedy_with_cache_equals_recomputation(tiny_model_factory):
    model = tiny_model_factory(attention_mode="causal")
    prompt = torch.randint(0, 66, (2, 4))
    out = generate_autoregressive(model, prompt, gen_length=6)
    x = prompt
    for _ in range(6):
        x = torch.cat([x, model(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.sequences, x)
    assert out.nfe == 6


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_is_exact_for_block_causal_models(tiny_model_factory, cache):
    model = tiny_model_factory(attention_mode="block_causal", block_size=4, max_position_embeddings=64)
    prompt = torch.randint(0, 66, (2, 8))  # prompt = 2 whole blocks, so generation blocks align with model blocks
    ref = generate(model, prompt, gen_length=16, steps=16, block_length=4)
    out = generate(model, prompt, gen_length=16, steps=16, block_length=4, cache=cache)
    assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe == 16


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_is_exact_when_keys_cannot_go_stale(tiny_model_factory, cache):
    """A 1-layer bidirectional model's keys depend on their own token only, so cached keys never go stale."""
    model = tiny_model_factory(num_hidden_layers=1)
    prompt = torch.randint(0, 66, (2, 5))
    ref = generate(model, prompt, gen_length=16, steps=8, block_length=8)
    out = generate(model, prompt, gen_length=16, steps=8, block_length=8, cache=cache)
    assert torch.equal(out.sequences, ref.sequences)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_left_padded_batch_equals_one_by_one(tiny_model_factory, cache):
    model = tiny_model_factory()
    prompts = [torch.randint(0, 65, (n,)) for n in (3, 6, 4, 6)]
    width = max(len(p) for p in prompts)
    batch = torch.full((4, width), 65)
    mask = torch.zeros(4, width, dtype=torch.long)
    for r, p in enumerate(prompts):
        batch[r, width - len(p):], mask[r, width - len(p):] = p, 1
    out = generate(model, batch, attention_mask=mask, gen_length=8, steps=8, block_length=4, cache=cache)
    for r, p in enumerate(prompts):
        single = generate(model, p[None], gen_length=8, steps=8, block_length=4, cache=cache)
        assert torch.equal(out.sequences[r, width:], single.sequences[0, len(p):]), r


def test_logit_shift_scores_position_i_with_the_hidden_state_at_i_minus_1(tiny_model_factory):
    """With the shift, the token committed at position i must be the argmax of the logits at i - 1."""
    model = tiny_model_factory()
    prompt = torch.randint(0, 66, (1, 5))
    out = generate(model, prompt, gen_length=4, steps=4, block_length=4, logit_shift=True)
    x = out.sequences
    # replay: the first committed position at step 1 uses logits of the all-masked canvas shifted by one
    canvas = torch.cat([prompt, torch.full((1, 4), 66)], dim=1)
    logits = model(canvas).logits
    shifted = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)[:, 5:]
    probs = shifted.softmax(-1)
    first = int(probs.max(-1).values.argmax())
    assert x[0, 5 + first] == shifted[0, first].argmax()
    for cache in ("prefix", "dual"):
        assert torch.equal(generate(model, prompt, gen_length=4, steps=4, block_length=4, logit_shift=True,
                                    cache=cache).sequences, x)


def test_stop_at_eos_and_eos_suppression(tiny_model_factory):
    model = tiny_model_factory()
    prompt = torch.randint(4, 66, (1, 4))
    full = generate(model, prompt, gen_length=16, steps=16, block_length=4)
    eos = int(full.sequences[0, 4:8].mode().values)  # declare the model's favourite first-block token to be EOS
    stopped = generate(model, prompt, gen_length=16, steps=16, block_length=4, stop_at_eos=True, eos_token_id=eos)
    assert stopped.nfe == 4 < full.nfe == 16
    assert torch.equal(stopped.sequences[0, :8], full.sequences[0, :8]) and (stopped.sequences[0, 8:] == eos).all()
    suppressed = generate(model, prompt, gen_length=16, steps=16, block_length=4, suppress_eos=True, eos_token_id=eos)
    assert not (suppressed.sequences[0, 4:] == eos).any()


def test_cfg_changes_the_guided_logits(tiny_model_factory):
    model = tiny_model_factory()
    prompt = torch.randint(0, 66, (1, 6))
    a = generate(model, prompt, gen_length=8, steps=8, block_length=8, cfg_scale=2.0)
    assert a.nfe == 16
    assert torch.equal(generate(model, prompt, gen_length=8, steps=8, block_length=8, cfg_scale=2.0,
                                cache="dual").sequences[:, :6], prompt)
