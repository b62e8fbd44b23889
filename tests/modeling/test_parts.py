"""Model parts (inputs, trunk, heads): checkpoints saved before the parts refactor load with the same keys and give
the same outputs; each new input and head does the math it promises."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from textdiff.modeling import DiTModel, KVCache, TextDiffModel

PRE_PARTS = Path(__file__).parents[1] / "fixtures" / "pre_parts"
TEXT_FIXTURES = ("plain", "timed", "gpt2like", "scaledrope")
# The fixtures' outputs were recorded on another CPU: float32 matmul kernels differ by a few ulps across CPU
# families (seen: up to 1.9e-6 on AMD EPYC against the recording machine), so "the same" is float32 rounding,
# not bits. A wrong key, layer order or formula moves these outputs by orders of magnitude more.
SAME = dict(rtol=1e-5, atol=1e-5)


def _load(name: str):
    model, info = AutoModel.from_pretrained(PRE_PARTS / name, output_loading_info=True)
    assert not any(info.values()), f"{name}: keys changed: {info}"
    saved = set(load_file(str(PRE_PARTS / name / "model.safetensors")))
    assert saved <= set(model.state_dict()) and not set(model.state_dict()) - saved - {"lm_head.weight"}
    # clone: safetensors hands back tensors at odd alignments, which moves float32 kernels by an ulp
    return model.eval(), {k: v.clone() for k, v in load_file(str(PRE_PARTS / name / "io.safetensors")).items()}


@pytest.mark.parametrize("name", TEXT_FIXTURES)
def test_pre_parts_text_checkpoint_gives_identical_outputs(name):
    model, io = _load(name)
    assert type(model) is TextDiffModel
    timed = {"t": io["t"]} if "t" in io else {}
    with torch.no_grad():
        out = model(io["input_ids"], output_hidden_states=True, **timed)
        torch.testing.assert_close(out.logits, io["logits"], **SAME)
        torch.testing.assert_close(out.last_hidden_state, io["last_hidden_state"], **SAME)
        for i, h in enumerate(out.hidden_states):
            torch.testing.assert_close(h, io[f"hidden_states.{i}"], **SAME)
        padded = model(io["input_ids"], attention_mask=io["attention_mask"], position_ids=io["position_ids"], **timed)
        torch.testing.assert_close(padded.logits, io["padded_logits"], **SAME)
        if "cached_logits" in io:
            cache = KVCache(model.config.num_hidden_layers)
            first = model(io["input_ids"][:, :4], cache=cache, use_cache=True, **timed).logits
            second = model(io["input_ids"][:, 4:], cache=cache, use_cache=True, **timed).logits
            torch.testing.assert_close(torch.cat([first, second], 1), io["cached_logits"], **SAME)


def test_pre_parts_dit_checkpoint_gives_identical_outputs():
    model, io = _load("dit")
    assert type(model) is DiTModel
    sample, t = io["sample"], io["t"]
    text = {k: io[k] for k in ("encoder_hidden_states", "encoder_attention_mask", "pooled_text")}
    dropped = dict(text, encoder_attention_mask=torch.zeros_like(text["encoder_attention_mask"]),
                   pooled_text=torch.zeros_like(text["pooled_text"]))
    with torch.no_grad():
        torch.testing.assert_close(model(sample, t, **text).sample, io["out_text"], **SAME)
        torch.testing.assert_close(model(sample, t).sample, io["out_uncond"], **SAME)
        torch.testing.assert_close(model(sample, t, **dropped).sample, io["out_dropped"], **SAME)
        torch.testing.assert_close(model(sample, t, skip_layers=[0], **text).sample, io["out_skip"], **SAME)


# -- the trunk is mounted: flat keys, live modules -----------------------------------------------------------------
def test_trunk_weights_keep_their_flat_names_and_are_live(tiny_model_factory):
    model = tiny_model_factory(time_conditioning=True)
    keys = list(model.state_dict())
    assert not any(k.startswith("trunk.") for k in keys)
    assert keys[0] == "embed_tokens.weight" and keys[-1] == "final_adaln.bias" and "layers.1.mlp.up_proj.weight" in keys
    assert model.trunk.layers is model.layers and model.trunk.norm is model.norm
    assert {n for n, _ in model.trunk.named_parameters()} == {k for k in keys if not k.startswith(("embed_", "lm_"))}
    # a module swapped on the model is the one the trunk runs: peft's LoRA and modules_to_save
    from peft import LoraConfig, get_peft_model

    x, t = torch.randint(0, 66, (2, 7)), torch.tensor([0.3, 0.6])
    before = model(x, t=t).logits
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["final_adaln"]))
    assert model.trunk.final_adaln is model.final_adaln and type(model.final_adaln).__name__ == "ModulesToSaveWrapper"
    with torch.no_grad():
        model.final_adaln.modules_to_save["default"].weight.normal_(std=0.5)
    assert not torch.allclose(peft_model(input_ids=x, t=t).logits, before)


def test_a_deep_copy_runs_its_own_modules(tiny_model_factory):
    import copy

    model = tiny_model_factory()
    twin = copy.deepcopy(model)
    assert twin.trunk.layers is twin.layers and twin.trunk.layers is not model.layers
    with torch.no_grad():
        twin.norm.weight.mul_(2.0)
    x = torch.randint(0, 66, (1, 5))
    assert not torch.allclose(twin(x).logits, model(x).logits)


def test_mounting_onto_a_taken_name_is_an_error():
    from textdiff.modeling.mount import mount
    from textdiff.modeling.trunk import Trunk

    host = torch.nn.Module()
    host.norm = torch.nn.Identity()
    with pytest.raises(ValueError, match="already has 'norm'"):
        mount(host, "trunk", Trunk(hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16))


def test_standalone_trunk_is_the_models_trunk(tiny_model_factory):
    """The trunk built on its own from keyword arguments, given the model's weights, computes the model."""
    from textdiff.modeling.trunk import Trunk

    model = tiny_model_factory(attention_mode="causal")
    trunk = Trunk(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
                  max_position_embeddings=64, attention_mode="causal")
    trunk.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(("embed_", "lm_"))})
    x = torch.randint(0, 66, (2, 9))
    h = trunk(model.embed_tokens(x)).last_hidden_state  # [B, L, hidden]
    torch.testing.assert_close(model.lm_head(h), model(x).logits, rtol=0, atol=0)


def test_one_init_for_every_model():
    from textdiff.modeling.pretrained import PartsPreTrainedModel

    assert TextDiffModel._init_weights is DiTModel._init_weights is PartsPreTrainedModel._init_weights


def test_dit_attention_mode_is_a_real_field():
    from textdiff.modeling import DiTConfig

    assert DiTConfig().attention_mode == "bidirectional"
    with pytest.raises(ValueError, match="attention_mode"):
        DiTConfig(attention_mode="sideways")
    kwargs = {"sample_size": 4, "patch_size": 2, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
              "text_embed_dim": 8, "num_frames": 2}
    torch.manual_seed(0)
    bidirectional = DiTModel(DiTConfig(**kwargs))
    causal = DiTModel(DiTConfig(**kwargs, attention_mode="causal"))
    causal.load_state_dict(bidirectional.state_dict())
    with torch.no_grad():
        for p in causal.parameters():
            p.add_(0.1 * torch.randn_like(p))
        bidirectional.load_state_dict(causal.state_dict())
        x, y = torch.randn(1, 1, 2, 4, 4), torch.randn(1, 1, 2, 4, 4)
        y[:, :, 0] = x[:, :, 0]  # same first frame, different second frame
        a, b = causal(x, 0.5).sample, causal(y, 0.5).sample
        torch.testing.assert_close(a[:, :, 0], b[:, :, 0], rtol=0, atol=0)  # frame 0 never sees frame 1
        assert not torch.allclose(bidirectional(x, 0.5).sample[:, :, 0], bidirectional(y, 0.5).sample[:, :, 0])
