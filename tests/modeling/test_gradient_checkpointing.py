"""Gradient checkpointing of the trunk (`trainer.gradient_checkpointing`): recomputing each block in the backward
pass gives the gradients of the plain backward, for the text model in every attention mode, with time
conditioning, for the DiT, and for a converted (adapted) pretrained model; it is off outside training."""

import pytest
import torch

from tests.conftest import tiny_config
from textdiff.modeling import DiTConfig, DiTModel, TextDiffModel


def _grads(model, loss_of):
    model.zero_grad()
    loss = loss_of(model)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare(model, loss_of):
    model.train()
    loss_plain, plain = _grads(model, loss_of)
    calls = []
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.trunk.gradient_checkpointing
    hf_checkpoint = model.trunk._gradient_checkpointing_func  # HF's partial of torch's checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return hf_checkpoint(*args, **kwargs)

    model.trunk._gradient_checkpointing_func = counting
    loss_ckpt, ckpt = _grads(model, loss_of)
    assert len(calls) == len(model.trunk.layers)  # every block recomputed
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=0, atol=0)
    assert plain.keys() == ckpt.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-6, atol=1e-7, msg=name)
    model.gradient_checkpointing_disable()
    assert not model.trunk.gradient_checkpointing


def _randomize(model):
    torch.manual_seed(1)
    with torch.no_grad():  # zero-initialised adaLN / heads: give every path signal
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("overrides", [{}, {"attention_mode": "causal"}, {"attention_mode": "block_causal"},
                                       {"time_conditioning": True}], ids=["bidirectional", "causal", "block", "time"])
def test_text_trunk_gradients_are_the_same_with_checkpointing(overrides):
    torch.manual_seed(0)
    model = _randomize(TextDiffModel(tiny_config(**overrides)))
    ids = torch.randint(0, 66, (3, 12), generator=torch.Generator().manual_seed(0))
    attention = torch.ones(3, 12, dtype=torch.long)
    attention[0, :3] = 0  # padding: the mask goes through the checkpointed blocks too
    t = {"t": torch.tensor([0.2, 0.5, 0.9])} if overrides.get("time_conditioning") else {}
    _compare(model, lambda m: m(ids, attention_mask=attention, **t).logits.float().square().mean())


def test_dit_gradients_are_the_same_with_checkpointing():
    torch.manual_seed(0)
    model = _randomize(DiTModel(DiTConfig(in_channels=1, sample_size=8, num_frames=1, patch_size=2, hidden_size=32,
                                          num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                          intermediate_size=64, text_embed_dim=12, max_text_length=6)))
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 6, 12, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    _compare(model, lambda m: m(x, torch.tensor([0.3, 0.8]), encoder_hidden_states=text, encoder_attention_mask=mask,
                                pooled_text=text.mean(1)).sample.square().mean())


def test_adapted_pretrained_model_gradients_are_the_same_with_checkpointing():
    """A converted HF causal LM (tiny random Llama -> TextDiffModel) checkpoints through the same trunk."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from textdiff.adapters import from_hf

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    model = from_hf(hf, attention_mode="bidirectional")
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    _compare(model, lambda m: m(ids).logits.float().square().mean())


def test_checkpointing_is_off_in_eval_and_without_grad():
    model = TextDiffModel(tiny_config())
    model.gradient_checkpointing_enable()
    called = []
    model.trunk._gradient_checkpointing_func = lambda *a, **k: called.append(1)
    ids = torch.randint(0, 66, (1, 8))
    model.eval()(ids)
    with torch.no_grad():
        model.train()(ids)
    assert called == []
