"""Released diffusion LMs (LLaDA, LLaDA-MoE, Dream) and Qwen3 convert into textdiff.

Qwen3 is checked against transformers' own Qwen3ForCausalLM. LLaDA / LLaDA-MoE / Dream ship their modeling
code with their checkpoints (not installable here): tests/fixtures/make_released_golden.py ran the published
code once on tiny random configs and committed what it computed (tests/fixtures/released/<arch>/); these tests
rebuild the same tiny checkpoints from the recorded tensor names, shapes and seed and must reproduce those
logits (1e-5) and the published `generate` / `diffusion_generate` tokens exactly. Then: a mapping error shows
(two layers swapped), round trips back to the published layout are exact, bad input is refused by name.
tests/test_released_usage.py runs the same tiny converted models through the rest of textdiff.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModel, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

import textdiff  # noqa: F401  (registers the Auto classes)
from tests.fixtures.make_released_golden import seeded_weights
from textdiff import generate
from textdiff.adapters import (
    ConversionError,
    UnsupportedArchitectureError,
    convert_checkpoint,
    from_hf,
    to_hf,
)
from textdiff.adapters.base import RawConfig
from textdiff.adapters.convert import to_hf_layout
from textdiff.adapters.registry import get_adapter
from textdiff.cli import main
from textdiff.samplers.generate import generate_autoregressive

GOLDEN = Path(__file__).parent / "fixtures" / "released"
ARCHS = ("llada", "llada_moe", "dream")
# the special tokens of each tiny vocabulary (real names, tiny ids) and how many plain words precede them
SPECIALS = {
    "llada": {"<|eot_id|>": 87, "<|endoftext|>": 88, "<|mdm_mask|>": 89},
    "llada_moe": {"<|role_end|>": 93, "<|endoftext|>": 94, "<|mask|>": 95},
    "dream": {"<|im_end|>": 91, "<|beginoftext|>": 92, "<|endoftext|>": 93, "<|pad|>": 94, "<|mask|>": 95},
}


def spec(arch: str) -> dict:
    return json.loads((GOLDEN / arch / "spec.json").read_text())


def golden(arch: str) -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / arch / "golden.safetensors")


def published_state(arch: str) -> dict[str, torch.Tensor]:
    """The tiny checkpoint in the published layout, redrawn from the recorded names, shapes and seed."""
    s = spec(arch)
    return seeded_weights(s["state_dict"], s["seed"])


def raw_config(arch: str) -> RawConfig:
    config = spec(arch)["config"]
    return RawConfig(config, get_adapter(config["architectures"][0]).config_defaults)


def convert(arch: str, state: dict | None = None):
    return from_hf(raw_config(arch), state if state is not None else published_state(arch))


def swap_layers(state: dict[str, torch.Tensor], a: int, b: int) -> dict[str, torch.Tensor]:
    """The same tensors with layers a and b exchanged (names are `...blocks.{i}.` or `...layers.{i}.`)."""
    out = dict(state)
    for name in state:
        for word in ("blocks", "layers"):
            if f".{word}.{a}." in name:
                other = name.replace(f".{word}.{a}.", f".{word}.{b}.")
                out[name], out[other] = state[other], state[name]
    assert any(not torch.equal(out[k], state[k]) for k in state)
    return out


def tokenizer_for(arch: str, with_mask: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the tiny vocabulary: <unk>, w1 ... and the model's special tokens."""
    specials = dict(SPECIALS[arch])
    if not with_mask:
        specials = {k: v for k, v in specials.items() if "mask" not in k}
    first_special = min(SPECIALS[arch].values())
    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, first_special)}, **specials}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    eos = "<|endoftext|>"
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token=eos, unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": list(specials)})
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} <|endoftext|>{% endfor %}"
    return tok


def released_dir(path: Path, arch: str, *, with_mask: bool = True, state: dict | None = None) -> Path:
    """A checkpoint directory as the hub ships it: config.json, model.safetensors, tokenizer files."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(spec(arch)["config"]))
    save_file(state if state is not None else published_state(arch), str(path / "model.safetensors"))
    tokenizer_for(arch, with_mask).save_pretrained(path)
    if arch == "dream":
        (path / "generation_config.json").write_text(json.dumps({"alg": "entropy", "steps": 512, "temperature": 0.2,
                                                                 "mask_token_id": 95}))
    return path


# ---------------------------------------------------------------------------------------------- Qwen3
def make_qwen3(tied: bool = False) -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    hf = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=48, max_position_embeddings=96, bos_token_id=1, eos_token_id=2, tie_word_embeddings=tied,
        attn_implementation="eager")).eval()
    with torch.no_grad():
        for param in hf.parameters():
            if param.dim() == 1:  # norm gains, q/k norms included: a wrong map would show
                param.add_(0.1 * torch.randn_like(param))
    return hf


@pytest.mark.parametrize("tied", [False, True])
def test_qwen3_logits_and_greedy_generation_equal_transformers(tied):
    hf = make_qwen3(tied)
    model = from_hf(hf)
    assert model.config.qk_norm and model.config.attention_mode == "causal" and model.config.logit_shift
    x = torch.randint(0, 61, (2, 24))
    with torch.no_grad():
        assert (model(x).logits - hf(x).logits).abs().max() <= 1e-5
    prompt = torch.randint(3, 61, (2, 5))
    ours = generate_autoregressive(model, prompt, gen_length=12).sequences
    theirs = hf.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours, theirs)


def test_qwen3_round_trip_is_exact_and_a_layer_swap_breaks_parity():
    hf = make_qwen3()
    back = to_hf(from_hf(hf))
    assert type(back) is Qwen3ForCausalLM and back.config.to_diff_dict() == hf.config.to_diff_dict()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in hf.state_dict().items())
    swapped = from_hf(hf.config, swap_layers(hf.state_dict(), 0, 1))
    x = torch.randint(0, 61, (1, 16))
    with torch.no_grad():
        assert (swapped(x).logits - hf(x).logits).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------- golden parity
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_the_published_modeling_code(arch):
    g, model = golden(arch), convert(arch)
    ids, attention_mask = g["input_ids"], g["attention_mask"]
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0) if arch == "dream" else None  # as Dream's generate
    with torch.no_grad():
        plain = model(ids).logits
        padded = model(ids, attention_mask=attention_mask, position_ids=positions).logits
    assert (plain - g["logits"]).abs().max() <= 1e-5
    real = attention_mask.bool()
    assert (padded[real] - g["logits_padded"][real]).abs().max() <= 1e-5


def test_llada_in_bfloat16_is_bit_identical_to_the_published_code():
    """LLaDA rotates q/k in float32 (`rope_full_precision`); so does the converted trunk, and in bf16 every
    other op rounds as the published code does: the same bf16 logits, not just close ones."""
    model = convert("llada").to(torch.bfloat16)
    assert model.config.rope_full_precision
    with torch.no_grad():
        logits = model(golden("llada")["input_ids"]).logits
    assert torch.equal(logits, golden("llada")["logits_bf16"])
    model.trunk.rope_full_precision = False  # rotating in bf16 is what would make the difference
    with torch.no_grad():
        assert not torch.equal(model(golden("llada")["input_ids"]).logits, golden("llada")["logits_bf16"])


@pytest.mark.parametrize("arch", ARCHS)
def test_swapping_two_layers_breaks_parity(arch):
    a, b = (1, 2) if arch == "llada_moe" else (0, 1)  # LLaDA-MoE's layer 0 is dense: swap two MoE layers
    model = convert(arch, swap_layers(published_state(arch), a, b))
    with torch.no_grad():
        assert (model(golden(arch)["input_ids"]).logits - golden(arch)["logits"]).abs().max() > 1e-2


def test_what_each_model_is():
    llada, moe, dream = (convert(a).config for a in ARCHS)
    assert (llada.attention_mode, llada.logit_shift, llada.mask_token_id, llada.eos_token_id) == (
        "bidirectional", False, 89, 88)
    assert llada.vocab_size == 96  # the padded embedding_size, not vocab_size 90
    assert (moe.mlp_type, moe.num_experts, moe.num_experts_per_tok, moe.qk_norm, moe.moe_dense_layers) == (
        "moe", 4, 2, True, [0])
    assert moe.shared_expert_intermediate_size == 24 and moe.moe_expert_bias and not moe.norm_topk_prob
    assert (dream.attention_mode, dream.logit_shift, dream.mask_token_id, dream.qkv_bias) == (
        "bidirectional", True, 95, True)


def test_released_defaults_are_the_published_special_ids():
    """A full-size LLaDA config.json without the special ids gets 126336 / 126081 / 126348 (no model is built)."""
    full = RawConfig({"architectures": ["LLaDAModelLM"], "d_model": 4096, "n_heads": 32, "n_kv_heads": 32,
                      "n_layers": 32, "mlp_hidden_size": 12288, "vocab_size": 126464, "embedding_size": 126464,
                      "max_sequence_length": 4096, "rope": True, "rope_theta": 500000.0, "block_type": "llama",
                      "layer_norm_type": "rms", "activation_type": "silu", "weight_tying": False},
                     get_adapter("LLaDAModelLM").config_defaults)
    config = get_adapter("LLaDAModelLM").textdiff_config(full)
    assert (config["mask_token_id"], config["eos_token_id"], config["eot_token_id"]) == (126336, 126081, 126348)
    dream = get_adapter("DreamModel").textdiff_config(RawConfig({}, get_adapter("DreamModel").config_defaults))
    assert dream["mask_token_id"] == 151666 and dream["logit_shift"]


def _textdiff_options(arch: str, case: dict, g: dict) -> dict:
    if arch == "dream":
        options = {"gen_length": case["max_new_tokens"], "steps": case["steps"], "block_length": case["max_new_tokens"],
                   "sampler": case["alg"], "schedule": "dream"}
        if case.get("padded"):
            options["attention_mask"] = g["prompt_mask"]
        return options
    return {"gen_length": case["gen_length"], "steps": case["steps"], "block_length": case["block_length"],
            "cfg_scale": case.get("cfg_scale", 0.0), "sampler": "low_confidence"}


@pytest.mark.parametrize("arch", ARCHS)
def test_textdiff_generate_gives_the_published_generate_tokens(arch):
    g, model = golden(arch), convert(arch)
    for k, case in enumerate(spec(arch)["cases"]):
        out = generate(model, g["prompts"], **_textdiff_options(arch, case, g))
        assert torch.equal(out.sequences, g[f"generated_{k}"]), case


def test_dreams_reveal_schedule_is_what_makes_its_tokens():
    """LLaDA's linear count (one token per step at steps = gen_length) is not Dream's: int(n (1 - s/t)) reveals
    nothing at the first step and catches up later; only the "dream" schedule gives Dream's tokens."""
    g, model = golden("dream"), convert("dream")
    k, case = next((k, c) for k, c in enumerate(spec("dream")["cases"]) if c["steps"] == 16 and c["alg"] == "entropy")
    options = {**_textdiff_options("dream", case, g), "schedule": "linear"}
    assert not torch.equal(generate(model, g["prompts"], **options).sequences, g[f"generated_{k}"])
    from textdiff.samplers.dream import ConfidenceSampler

    sampler = ConfidenceSampler(95, score="entropy", schedule="dream")
    sampler.set_timesteps(16)
    counts = [int(sampler.dream_num_transfer(torch.tensor([16]), t)) for t in sampler.timesteps[:1]]
    assert counts == [0]  # int(16 * (1 - t_1 / t_0)) = int(16 * 0.0624...) = 0


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_to_the_published_layout_is_exact(arch):
    state = published_state(arch)
    config, tensors = to_hf_layout(convert(arch, state))
    assert set(tensors) == set(state) and all(torch.equal(tensors[k], state[k]) for k in state)
    assert config == spec(arch)["config"]


@pytest.mark.parametrize("arch", ARCHS)
def test_convert_directory_info_and_export_back(arch, tmp_path, capsys):
    src = released_dir(tmp_path / "hub", arch)
    assert main(["convert", "--from", str(src), "--to", str(tmp_path / "td")]) == 0
    model = AutoModel.from_pretrained(tmp_path / "td")
    cfg = model.config
    assert cfg.adapted_from["architecture"] == spec(arch)["config"]["architectures"][0]
    assert cfg.mask_token_id == SPECIALS[arch]["<|mdm_mask|>" if arch == "llada" else "<|mask|>"]
    eot = {"llada": "<|eot_id|>", "llada_moe": "<|role_end|>", "dream": "<|im_end|>"}[arch]
    assert cfg.eot_token_id == SPECIALS[arch][eot]
    with torch.no_grad():
        assert (model(golden(arch)["input_ids"]).logits - golden(arch)["logits"]).abs().max() <= 1e-5
    capsys.readouterr()
    assert main(["info", str(tmp_path / "td")]) == 0
    out = capsys.readouterr().out
    assert f"adapted_from: {cfg.adapted_from['architecture']} ({src.resolve()})" in out
    if arch == "dream":
        assert cfg.adapted_from["generation_config"]["alg"] == "entropy" and "'steps': 512" in out
    # back out: the published layout, the same tensors
    assert main(["convert", "--from", str(tmp_path / "td"), "--to", str(tmp_path / "back")]) == 0
    back = load_file(tmp_path / "back" / "model.safetensors")
    state = published_state(arch)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == spec(arch)["config"]


# ---------------------------------------------------------------------------------------------- bad input
def test_unknown_architecture_directory_names_the_supported_ones(tmp_path, capsys):
    (tmp_path / "mamba").mkdir()
    (tmp_path / "mamba" / "config.json").write_text(json.dumps({"architectures": ["MambaForCausalLM"]}))
    assert main(["convert", "--from", str(tmp_path / "mamba"), "--to", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "MambaForCausalLM" in err and "is not supported" in err
    for name in ("LLaDAModelLM", "LLaDAMoEModelLM", "DreamModel", "Qwen3ForCausalLM", "LlamaForCausalLM"):
        assert name in err


@pytest.mark.parametrize("arch, token", [("llada", "<|mdm_mask|>"), ("dream", "<|mask|>")])
def test_a_tokenizer_without_the_models_mask_token_is_an_error_naming_it(arch, token, tmp_path, capsys):
    src = released_dir(tmp_path / "hub", arch, with_mask=False)
    with pytest.raises(ConversionError, match=f"tokenizer has no '{token}'.*id {SPECIALS[arch][token]}"):
        convert_checkpoint(str(src), tmp_path / "td")
    assert main(["convert", "--from", str(src), "--to", str(tmp_path / "td")]) == 2
    assert token in capsys.readouterr().err and not (tmp_path / "td").exists()


def test_a_tokenizer_class_of_the_checkpoints_own_code_falls_back_to_its_tokenizer_json(tmp_path):
    """Dream's tokenizer_config names its own `DreamTokenizer` (remote code, never run): the same vocabulary
    loads from tokenizer.json, with <|mask|> at the model's mask id."""
    src = released_dir(tmp_path / "hub", "dream")
    tokenizer_config = json.loads((src / "tokenizer_config.json").read_text())
    tokenizer_config.update(tokenizer_class="DreamTokenizer",
                            auto_map={"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]})
    (src / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    result = convert_checkpoint(str(src), tmp_path / "td")
    assert result.model.config.mask_token_id == 95 and result.tokenizer.mask_token == "<|mask|>"
    assert result.tokenizer("w5 w7").input_ids == tokenizer_for("dream")("w5 w7").input_ids


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_moe_expert_count_that_contradicts_the_config_is_an_error(change):
    state = published_state("llada_moe")
    if change == "missing":
        state = {k: v for k, v in state.items() if ".layers.2.mlp.experts.3." not in k}
        found = 3
    else:
        state.update({k.replace(".experts.3.", ".experts.4."): v.clone()
                      for k, v in state.items() if ".layers.2.mlp.experts.3." in k})
        found = 5
    with pytest.raises(ConversionError, match=f"layer 2 has {found} experts .* num_experts=4"):
        convert("llada_moe", state)


def test_unsupported_released_options_are_refused_by_name():
    config = dict(spec("llada")["config"], block_type="sequential")
    with pytest.raises(UnsupportedArchitectureError, match="block_type='sequential'"):
        from_hf(RawConfig(config), published_state("llada"))
    moe = dict(spec("llada_moe")["config"], partial_rotary_factor=0.5)
    with pytest.raises(UnsupportedArchitectureError, match="partial_rotary_factor"):
        from_hf(RawConfig(moe), published_state("llada_moe"))
    with pytest.raises(ValueError, match="not a transformers class"):
        to_hf(convert("llada"))


# ---------------------------------------------------------------------------------------------- the MoE MLP
@pytest.mark.parametrize("norm_topk_prob", [False, True])
def test_moe_mlp_is_the_weighted_sum_of_its_top_k_experts(norm_topk_prob):
    from textdiff.modeling.moe import MoEMLP

    torch.manual_seed(0)
    moe = MoEMLP(8, 6, num_experts=4, top_k=2, shared_intermediate_size=5, norm_topk_prob=norm_topk_prob,
                 expert_bias=True)
    moe.expert_bias.copy_(torch.tensor([0.0, 0.3, 0.0, -0.2]))
    x = torch.randn(3, 5, 8)
    expected = torch.zeros_like(x)
    for b in range(3):
        for i in range(5):
            p = torch.softmax(moe.gate(x[b, i]), -1) + moe.expert_bias
            weights, experts = p.topk(2)
            if norm_topk_prob:
                weights = weights / weights.sum()
            for w, e in zip(weights, experts):
                expected[b, i] += w * moe.experts[int(e)](x[b, i])
            expected[b, i] += moe.shared_expert(x[b, i])
    torch.testing.assert_close(moe(x), expected, rtol=1e-5, atol=1e-6)


def test_a_llada_moe_config_that_calls_itself_llada_converts_as_llada_moe(tmp_path):
    """The hub's LLaDA-MoE config.json says model_type "llada"; its experts say what it is."""
    src = released_dir(tmp_path / "hub", "llada_moe")
    config = dict(spec("llada_moe")["config"], model_type="llada", architectures=["LLaDAModelLM"])
    (src / "config.json").write_text(json.dumps(config))
    result = convert_checkpoint(str(src), tmp_path / "td")
    assert result.model.config.adapted_from["architecture"] == "LLaDAMoEModelLM"
    g = golden("llada_moe")
    with torch.no_grad():
        assert (result.model(g["input_ids"]).logits - g["logits"]).abs().max() <= 1e-5
