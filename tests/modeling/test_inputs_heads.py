"""The inputs and heads other families build on: each one's math, through `TextDiffModel`'s forward arguments."""

import math

import pytest
import torch

from tests.conftest import tiny_config
from textdiff import TextDiffModel
from textdiff.modeling.inputs import LatentInput, VectorInput, l2_scaled


def model_with(**options) -> TextDiffModel:
    torch.manual_seed(0)
    return TextDiffModel(tiny_config(**options)).eval()


def randomize(module: torch.nn.Module) -> None:
    """Move every weight off its init (zero-initialised layers included) so each path carries signal."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))


def test_new_parts_are_off_by_default_and_add_only_new_keys():
    plain, hybrid = model_with(), model_with(latent_dim=8, vector_dim=6, prefix_dim=5, vector_head_dim=4)
    old, new = list(plain.state_dict()), list(hybrid.state_dict())
    assert new[: len(old)] == old
    assert {k.split(".")[0] for k in new[len(old):]} == {"latent_in", "vector_in", "prefix_in", "vector_head"}


# -- hybrid token + latent (CADD) ---------------------------------------------------------------------------------
def test_hybrid_with_zero_latent_is_exactly_the_token_model():
    hybrid = model_with(latent_dim=8)
    randomize(hybrid)  # a trained projection, not the zero init
    plain = model_with()
    plain.load_state_dict({k: v for k, v in hybrid.state_dict().items() if not k.startswith("latent_in")})
    x = torch.randint(0, 66, (2, 9))
    reference = plain(x).logits
    assert torch.equal(hybrid(x, latents=torch.zeros(2, 9, 8)).logits, reference)
    # a nonzero latent at no position changes nothing either; at some positions it does
    z, nowhere = torch.randn(2, 9, 8), torch.zeros(2, 9, dtype=torch.bool)
    assert torch.equal(hybrid(x, latents=z, latent_positions=nowhere).logits, reference)
    assert not torch.allclose(hybrid(x, latents=z, latent_positions=x > 30).logits, reference)


def test_hybrid_adds_the_projected_latent_at_chosen_positions_only():
    part = LatentInput(latent_dim=4, hidden_size=6)
    randomize(part)
    e, z = torch.randn(2, 5, 6), torch.randn(2, 5, 4)
    where = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    expected = torch.where(where[..., None], e + z @ part.proj.weight.T, e)
    torch.testing.assert_close(part(e, z, where), expected, rtol=0, atol=0)
    identity = LatentInput(latent_dim=6, hidden_size=6, projection="identity")
    z6 = torch.randn(2, 5, 6)
    torch.testing.assert_close(identity(e, z6), e + z6, rtol=0, atol=0)
    with pytest.raises(ValueError, match="latent_dim"):
        LatentInput(latent_dim=4, hidden_size=6, projection="identity")


def test_zero_initialised_latent_and_vector_streams_leave_the_output_unchanged_at_init():
    x = torch.randint(0, 66, (2, 9))
    for options, extra in (({"latent_dim": 8}, {"latents": torch.randn(2, 9, 8)}),
                           ({"vector_dim": 6, "vector_zero_init": True}, {"inputs_vectors": torch.randn(2, 9, 6)})):
        model = model_with(**options)
        assert torch.equal(model(x, **extra).logits, model(x).logits), options


# -- continuous vectors -------------------------------------------------------------------------------------------
def test_l2_scaled_vectors_have_norm_sqrt_d():
    v = torch.randn(3, 7, 16) * torch.rand(3, 7, 1) * 10
    norms = l2_scaled(v).norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, math.sqrt(16)))
    part = VectorInput(vector_dim=16, hidden_size=8, normalize=True)
    torch.testing.assert_close(part(v), l2_scaled(v) @ part.proj.weight.T, rtol=0, atol=0)


def test_self_conditioning_concatenates_the_previous_estimate():
    part = VectorInput(vector_dim=4, hidden_size=8, self_condition=True)
    v, estimate = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    w = part.proj.weight  # [hidden, 2 * vector_dim]
    torch.testing.assert_close(part(v, estimate), v @ w[:, :4].T + estimate @ w[:, 4:].T, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(part(v), part(v, torch.zeros_like(v)), rtol=0, atol=0)  # first step: no estimate
    with pytest.raises(ValueError, match="self-conditioning"):
        VectorInput(vector_dim=4, hidden_size=8)(v, estimate)


def test_vectors_alone_or_with_tokens_through_the_model():
    model = model_with(vector_dim=6, vector_self_condition=True)
    randomize(model)
    v, estimate, x = torch.randn(2, 9, 6), torch.randn(2, 9, 6), torch.randint(0, 66, (2, 9))
    alone = model(inputs_vectors=v, self_condition=estimate).logits
    torch.testing.assert_close(alone, model(inputs_embeds=model.vector_in(v, estimate)).logits, rtol=0, atol=0)
    both = model(x, inputs_vectors=v).logits
    torch.testing.assert_close(both, model(inputs_embeds=model.embed_tokens(x) + model.vector_in(v)).logits,
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="no vector input"):
        model_with()(inputs_vectors=v)
    with pytest.raises(ValueError, match="exactly one"):
        model(x, inputs_embeds=model.embed_tokens(x))


# -- condition prefix ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix_dim", [None, 5])
def test_prefix_equals_concatenating_its_embeddings_in_front(prefix_dim):
    model = model_with(prefix_dim=prefix_dim)
    randomize(model)
    x = torch.randint(0, 66, (2, 9))
    prefix = torch.randn(2, 3, prefix_dim or 32)
    projected = model.prefix_in(prefix) if prefix_dim else prefix
    manual = model(inputs_embeds=torch.cat([projected, model.embed_tokens(x)], 1), output_hidden_states=True)
    out = model(x, prefix=prefix, output_hidden_states=True)
    torch.testing.assert_close(out.logits, manual.logits[:, 3:], rtol=0, atol=0)
    assert out.logits.shape == (2, 9, 67) and all(h.shape[1] == 9 for h in out.hidden_states)


def test_prefix_then_cached_decoding_equals_one_pass():
    """The planner's AR decoder: condition slots in front, then tokens decoded with the KV cache."""
    from textdiff import KVCache

    model = model_with(attention_mode="causal")
    x, prefix = torch.randint(0, 66, (1, 8)), torch.randn(1, 2, 32)
    full = model(x, prefix=prefix).logits
    cache = KVCache(model.config.num_hidden_layers)
    first = model(x[:, :5], prefix=prefix, cache=cache, use_cache=True).logits
    rest = model(x[:, 5:], cache=cache, use_cache=True).logits
    torch.testing.assert_close(torch.cat([first, rest], 1), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="first call"):
        model(x[:, :1], prefix=prefix, cache=cache)


# -- vector head --------------------------------------------------------------------------------------------------
def test_vector_head_starts_at_zero_and_reads_the_final_hidden_state():
    model = model_with(vector_head_dim=4)
    x = torch.randint(0, 66, (2, 9))
    out = model(x)
    assert out.logits.shape == (2, 9, 67) and torch.equal(out.vectors, torch.zeros(2, 9, 4))
    randomize(model)
    out = model(x)
    torch.testing.assert_close(out.vectors, model.vector_head(out.last_hidden_state), rtol=0, atol=0)
    assert model_with()(x).vectors is None


def test_model_with_every_part_saves_and_loads(tmp_path):
    from transformers import AutoModel

    model = model_with(latent_dim=8, vector_dim=6, vector_self_condition=True, prefix_dim=5, vector_head_dim=4)
    randomize(model)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    x, z, v, p = torch.randint(0, 66, (2, 9)), torch.randn(2, 9, 8), torch.randn(2, 9, 6), torch.randn(2, 2, 5)
    kwargs = {"latents": z, "latent_positions": x > 20, "inputs_vectors": v, "self_condition": v.flip(0), "prefix": p}
    a, b = model(x, **kwargs), loaded(x, **kwargs)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    torch.testing.assert_close(a.vectors, b.vectors, rtol=0, atol=0)
