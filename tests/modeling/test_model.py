"""The shared trunk: attention patterns, HF Llama parity, adaLN-Zero, KV cache, save/load."""

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, LlamaConfig, LlamaForCausalLM

from textdiff import KVCache, TextDiffModel
from tests.conftest import tiny_config


def test_logits_shape(tiny_model_factory):
    model = tiny_model_factory()
    x = torch.randint(0, 66, (3, 11))
    assert model(x).logits.shape == (3, 11, 67)


def test_causal_mode_never_attends_to_the_future(tiny_model_factory):
    model = tiny_model_factory(attention_mode="causal")
    x = torch.randint(0, 66, (2, 12))
    y = x.clone()
    y[:, 7] = (y[:, 7] + 1) % 66
    a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-4


def test_bidirectional_mode_sees_the_whole_sequence(tiny_model_factory):
    model = tiny_model_factory()
    x = torch.randint(0, 66, (1, 12))
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 66
    assert (model(x).logits[:, 0] - model(y).logits[:, 0]).abs().max() > 1e-4


def test_block_causal_sees_its_block_and_earlier_blocks_only(tiny_model_factory):
    model = tiny_model_factory(attention_mode="block_causal", block_size=4)
    x = torch.randint(0, 66, (1, 12))
    y = x.clone()
    y[:, 9] = (y[:, 9] + 1) % 66  # block 2
    a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=0, atol=0)  # blocks 0, 1 unchanged
    assert (a[:, 8] - b[:, 8]).abs().max() > 1e-4  # position 8 sees position 9 (same block)


def _llama_twin(model: TextDiffModel) -> LlamaForCausalLM:
    cfg = model.config
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
            rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=False,
            attn_implementation="eager",
        )
    ).eval()
    state = {("lm_head.weight" if k == "lm_head.weight" else f"model.{k}"): v for k, v in model.state_dict().items()}
    llama.load_state_dict(state, strict=True)
    return llama


def test_causal_mode_matches_hf_llama_exactly(tiny_model_factory):
    """An independent implementation (HF Llama, eager attention) with the same weights gives the same logits."""
    model = tiny_model_factory(attention_mode="causal")
    llama = _llama_twin(model)
    x = torch.randint(0, 66, (2, 17))
    torch.testing.assert_close(model(x).logits, llama(x).logits, rtol=1e-5, atol=1e-5)


def test_adaln_zero_at_init_equals_unconditioned_trunk(tiny_model_factory):
    plain = tiny_model_factory()
    timed = tiny_model_factory(time_conditioning=True)
    missing, unexpected = timed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all("adaln" in k or "time_embed" in k for k in missing)
    x = torch.randint(0, 66, (2, 9))
    for t in (0.0, 0.3, 1.0):
        torch.testing.assert_close(timed(x, t=torch.full((2,), t)).logits, plain(x).logits, rtol=0, atol=0)
    # and the conditioning is live once the modulation is trained away from zero
    torch.nn.init.normal_(timed.layers[0].adaln.weight, std=0.1)
    a = timed(x, t=torch.full((2,), 0.1)).logits
    b = timed(x, t=torch.full((2,), 0.9)).logits
    assert (a - b).abs().max() > 1e-4


def test_time_argument_is_validated(tiny_model_factory):
    x = torch.randint(0, 66, (1, 5))
    with pytest.raises(ValueError, match="time_conditioning is False"):
        tiny_model_factory()(x, t=torch.zeros(1))
    with pytest.raises(ValueError, match="pass t"):
        tiny_model_factory(time_conditioning=True)(x)


@pytest.mark.parametrize("mode", ["causal", "block_causal"])
def test_kv_cache_decoding_equals_full_forward(tiny_model_factory, mode):
    model = tiny_model_factory(attention_mode=mode, block_size=4)
    x = torch.randint(0, 66, (2, 16))
    full = model(x).logits
    cache = KVCache(model.config.num_hidden_layers)
    chunks = [4, 4, 4, 4] if mode == "block_causal" else [5, 1, 1, 9]  # block-causal caches whole blocks
    pieces, start = [], 0
    for n in chunks:
        out = model(x[:, start : start + n], cache=cache, use_cache=True)
        pieces.append(out.logits)
        start += n
    assert cache.seq_len == 16
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_cache_crop_drops_the_tail(tiny_model_factory):
    model = tiny_model_factory(attention_mode="causal")
    x = torch.randint(0, 66, (1, 10))
    cache = KVCache(model.config.num_hidden_layers)
    model(x, cache=cache, use_cache=True)
    cache.crop(6)
    out = model(x[:, 6:], cache=cache, use_cache=True).logits
    torch.testing.assert_close(out, model(x).logits[:, 6:], rtol=1e-5, atol=1e-5)


def test_left_padding_with_positions_equals_unpadded(tiny_model_factory):
    model = tiny_model_factory(attention_mode="causal")
    x = torch.randint(0, 66, (1, 7))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], dim=1)
    attn = torch.tensor([[0, 0, 0] + [1] * 7])
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    out = model(padded, attention_mask=attn, position_ids=pos).logits[:, 3:]
    torch.testing.assert_close(out, model(x).logits, rtol=1e-5, atol=1e-5)
    assert not torch.isnan(model(padded, attention_mask=attn, position_ids=pos).logits).any()


def test_padding_keys_are_invisible_in_bidirectional_mode(tiny_model_factory):
    model = tiny_model_factory()
    x = torch.randint(0, 66, (1, 6))
    junk = torch.randint(0, 66, (1, 4))
    out = model(torch.cat([x, junk], 1), attention_mask=torch.tensor([[1] * 6 + [0] * 4])).logits[:, :6]
    torch.testing.assert_close(out, model(x).logits, rtol=1e-5, atol=1e-5)


def test_sequence_longer_than_context_is_a_clear_error(tiny_model_factory):
    model = tiny_model_factory(max_position_embeddings=8)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="attention_mode"):
        tiny_config(attention_mode="sideways")
    with pytest.raises(ValueError, match="mask_token_id"):
        tiny_config(mask_token_id=500)


@pytest.mark.parametrize("auto", [AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM])
def test_save_then_load_gives_identical_logits(tiny_model_factory, tmp_path, auto):
    model = tiny_model_factory(tie_word_embeddings=True, time_conditioning=True)
    torch.nn.init.normal_(model.layers[1].adaln.weight, std=0.1)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = auto.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, TextDiffModel)
    assert loaded.lm_head.weight.data_ptr() == loaded.embed_tokens.weight.data_ptr()
    x, t = torch.randint(0, 66, (2, 9)), torch.tensor([0.2, 0.8])
    torch.testing.assert_close(loaded(x, t=t).logits, model(x, t=t).logits, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["bidirectional", "causal", "block_causal"])
def test_cache_overwrite_recomputes_a_slice_exactly(tiny_model_factory, mode):
    """Dual-cache path: cache all positions, then recompute positions [4, 8) in place; equals a full forward
    wherever the stale suffix keys cannot matter (queries that never see the suffix, or a 1-layer model whose
    keys depend on their own token only)."""
    layers = 1 if mode == "bidirectional" else 2
    model = tiny_model_factory(attention_mode=mode, block_size=4, num_hidden_layers=layers)
    x = torch.randint(0, 66, (2, 12))
    cache = KVCache(model.config.num_hidden_layers)
    model(x, cache=cache, use_cache=True)
    y = x.clone()
    y[:, 4:8] = torch.randint(0, 66, (2, 4))
    cache.write_at = 4
    out = model(y[:, 4:8], cache=cache, use_cache=True).logits
    assert cache.seq_len == 12
    torch.testing.assert_close(out, model(torch.cat([x[:, :4], y[:, 4:8], x[:, 8:]], 1)).logits[:, 4:8],
                               rtol=1e-5, atol=1e-5)
