"""DiTModel on the shared trunk: shapes for images and videos, patchify round trip, adaLN-Zero init, text
padding / caption dropout semantics, skip-layer hook, 3-D RoPE, Auto registration and save / load."""

import copy

import pytest
import torch

from textdiff.modeling import DiTConfig, DiTModel
from textdiff.modeling.dit import axial_rope_cos_sin
from textdiff.modeling.layers import Block, apply_rope


def tiny_dit(**overrides) -> DiTModel:
    kwargs = {"in_channels": 1, "sample_size": 8, "num_frames": 1, "patch_size": 2, "hidden_size": 32, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64, "text_embed_dim": 12,
                  "max_text_length": 6}
    kwargs.update(overrides)
    torch.manual_seed(0)
    return DiTModel(DiTConfig(**kwargs)).eval()


def randomize(model: DiTModel) -> DiTModel:
    """Give the zero-initialised adaLN / output layers random weights so every path carries signal."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def text(batch=2, length=6, dim=12, valid=(4, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for i, n in enumerate(valid):
        mask[i, :n] = 1
    return {"encoder_hidden_states": torch.randn(batch, length, dim, generator=g), "encoder_attention_mask": mask,
            "pooled_text": torch.randn(batch, dim, generator=g)}


def test_shared_trunk_blocks_are_reused():
    model = tiny_dit()
    assert all(type(layer) is Block for layer in model.layers)


@pytest.mark.parametrize("frames, size, patch", [(1, 8, 2), (3, 8, 4)])
def test_patchify_round_trip_and_output_shapes(frames, size, patch):
    model = randomize(tiny_dit(num_frames=frames, sample_size=size, patch_size=patch))
    shape = (2, *model.config.sample_shape)
    x = torch.randn(shape)
    video = x if frames > 1 else x[:, :, None]
    tokens = model.patchify(video)
    assert tokens.shape == (2, frames * (size // patch) ** 2, patch * patch)
    assert torch.equal(model.unpatchify(tokens, frames), video)
    # first token = top-left patch of frame 0
    assert torch.equal(tokens[0, 0], video[0, 0, 0, :patch, :patch].reshape(-1))
    out = model(x, torch.tensor([0.3, 0.8]), **text()).sample
    assert out.shape == shape and torch.isfinite(out).all()


def test_adaln_zero_init_output_is_zero_and_blocks_are_identity():
    model = tiny_dit()
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model(x, torch.tensor([0.5, 0.5]), **text()).sample, torch.zeros_like(x))
    h = torch.randn(2, 5, 32)
    cos, sin = axial_rope_cos_sin(torch.zeros(5, 3, dtype=torch.long), 16, 100.0)
    cond = torch.randn(2, 32)
    torch.testing.assert_close(model.layers[0](h, cos, sin, None, False, cond=cond), h)


def test_text_padding_is_invisible_and_dropped_captions_are_content_free():
    model = randomize(tiny_dit())
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.4, 0.6])
    cond = text()
    out = model(x, t, **cond).sample
    padded = dict(cond)  # change what sits under the padding
    padded["encoder_hidden_states"] = cond["encoder_hidden_states"].clone()
    padded["encoder_hidden_states"][0, 4:] = 100.0
    torch.testing.assert_close(model(x, t, **padded).sample, out)
    dropped = [{"encoder_hidden_states": text(seed=s)["encoder_hidden_states"],
                "encoder_attention_mask": torch.zeros(2, 6, dtype=torch.long), "pooled_text": torch.zeros(2, 12)}
               for s in (1, 2)]
    a, b = (model(x, t, **d).sample for d in dropped)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, out)


def test_skip_layers_equals_removing_the_block():
    model = randomize(tiny_dit())
    x, t, cond = torch.randn(2, 1, 8, 8), torch.tensor([0.2, 0.9]), text()
    pruned = copy.deepcopy(model)
    del pruned.layers[1]
    torch.testing.assert_close(model(x, t, skip_layers=[1], **cond).sample, pruned(x, t, **cond).sample)
    assert not torch.allclose(model(x, t, skip_layers=[1], **cond).sample, model(x, t, **cond).sample)


def test_axial_rope_is_relative_per_axis_and_text_is_unrotated():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 2, 24, generator=g), torch.randn(1, 1, 2, 24, generator=g)

    def score(p1, p2):
        cos, sin = axial_rope_cos_sin(torch.tensor([p1, p2]), 24, 100.0)
        rq, rk = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return (rq[0, 0, 0] * rk[0, 0, 1]).sum()

    torch.testing.assert_close(score([0, 1, 2], [1, 3, 0]), score([2, 4, 5], [3, 6, 3]))  # same 3-D offset
    assert not torch.allclose(score([0, 1, 2], [1, 3, 0]), score([0, 1, 2], [0, 3, 0]))  # time offset matters
    cos, sin = axial_rope_cos_sin(torch.zeros(3, 3, dtype=torch.long), 24, 100.0)
    assert torch.equal(cos, torch.ones_like(cos)) and torch.equal(sin, torch.zeros_like(sin))


def test_auto_classes_save_and_load(tmp_path):
    from transformers import AutoConfig, AutoModel

    model = randomize(tiny_dit(num_frames=2, patch_size=4))
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is DiTConfig
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is DiTModel
    x, t = torch.randn(2, 1, 2, 8, 8), torch.tensor([0.1, 0.7])
    torch.testing.assert_close(loaded(x, t, **text()).sample, model(x, t, **text()).sample)


def test_bad_inputs_raise_clear_errors():
    model = tiny_dit()
    with pytest.raises(ValueError, match="takes"):
        model(torch.randn(2, 1, 16, 16), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="divisible"):
        DiTConfig(sample_size=10, patch_size=4)
