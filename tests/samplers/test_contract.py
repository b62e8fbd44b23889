"""One sampler contract: every masked rule is driven by `for t in sampler.timesteps: sampler.step(logits, t, x)`
exactly as `generate` drives it; a state carries latents through the loop to the model; one registry lists every
rule with its kind; and the layers stay apart (samplers never import train or the pipelines)."""

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from textdiff.samplers import (
    REGISTRY,
    SAMPLERS,
    MaskedSampler,
    Sampler,
    SamplerState,
    build_sampler,
    generate,
    register_sampler,
    sampler_entry,
)
from textdiff.samplers.continuous import CONTINUOUS_SAMPLERS, build_continuous_sampler, sample_continuous
from textdiff.samplers.flow import FlowEulerSampler

MASK = 66  # the tiny model's [MASK]
MASKED_RULES = ["low_confidence", "random", "maskgit_plus", "topk_margin", "entropy", "threshold", "factor",
                "ancestral"]
CONTINUOUS_RULES = ["euler", "euler_stochastic", "heun", "dpmpp_2m", "dpmpp_1", "ddim", "dpmpp_2m_sd3", "unipc"]


# ---------------------------------------------------------------------------------------------- driving by hand


@torch.no_grad()
def drive_by_hand(model, sampler, prompt, gen_length, block_length, steps, latents=None):
    """The diffusers loop over the whole canvas, block by block, with no help from `generate`:
    (sequences, latents, nfe)."""
    x = torch.cat([prompt, torch.full((prompt.shape[0], gen_length), MASK)], dim=1)
    sample = x if latents is None else SamplerState(x, latents)
    per_block, nfe = steps // (gen_length // block_length), 0
    sampler.set_timesteps(per_block)
    for start in range(prompt.shape[1], x.shape[1], block_length):
        sampler.set_region(start, start + block_length, sample)
        for t in sampler.timesteps:
            tokens = sample if latents is None else sample.tokens
            if not (tokens[:, start:start + block_length] == MASK).any():
                break  # a dynamic (or lucky ancestral) rule finished the block early
            sample = sampler.step(model(tokens).logits, t, sample).prev_sample
            nfe += 1
    if latents is None:
        return sample, None, nfe
    return sample.tokens, sample.latents, nfe


@torch.no_grad()
def drive_by_hand_from_block_start(model, sampler, prompt, gen_length, block_length, steps):
    """The same loop, stepping on the canvas from the block start on: the window `generate` scores and steps on.
    A rule's random draws follow the shape of its sample, so this is the form that reproduces sampled runs."""
    x = torch.cat([prompt, torch.full((prompt.shape[0], gen_length), MASK)], dim=1)
    per_block, nfe = steps // (gen_length // block_length), 0
    sampler.set_timesteps(per_block)
    for start in range(prompt.shape[1], x.shape[1], block_length):
        sampler.set_region(0, block_length, x[:, start:])
        for t in sampler.timesteps:
            if not (x[:, start:start + block_length] == MASK).any():
                break
            x[:, start:] = sampler.step(model(x).logits[:, start:], t, x[:, start:]).prev_sample
            nfe += 1
    return x, nfe


@pytest.mark.parametrize("gen_length", [8, 16])  # one block; two blocks
@pytest.mark.parametrize("name", MASKED_RULES)
def test_every_masked_rule_driven_by_hand_equals_generate(tiny_model_factory, name, gen_length):
    model = tiny_model_factory()
    prompt = torch.randint(0, MASK, (2, 5), generator=torch.Generator().manual_seed(1))
    steps = gen_length  # one token per step for count rules: the dynamic ones always finish within it
    sampler = build_sampler(name, mask_token_id=MASK, generator=torch.Generator().manual_seed(0))
    tokens, _, nfe = drive_by_hand(model, sampler, prompt, gen_length, 8, steps)
    ref = generate(model, prompt, gen_length=gen_length, steps=steps, block_length=8, sampler=name,
                   generator=torch.Generator().manual_seed(0))
    assert torch.equal(tokens, ref.sequences)
    assert nfe == ref.nfe
    assert not (tokens == MASK).any()


@pytest.mark.parametrize("name", MASKED_RULES)
def test_sampled_rules_driven_by_hand_equal_generate(tiny_model_factory, name):
    model = tiny_model_factory()
    prompt = torch.randint(0, MASK, (2, 5), generator=torch.Generator().manual_seed(1))

    def rule():
        return build_sampler(name, mask_token_id=MASK, temperature=1.0, generator=torch.Generator().manual_seed(0))

    tokens, nfe = drive_by_hand_from_block_start(model, rule(), prompt, 16, 8, 16)
    ref = generate(model, prompt, gen_length=16, steps=16, block_length=8, sampler=rule())
    assert torch.equal(tokens, ref.sequences) and nfe == ref.nfe


@pytest.mark.parametrize("name", ["low_confidence", "threshold", "ancestral"])
def test_a_state_steps_like_its_canvas_and_carries_its_latents(tiny_model_factory, name):
    model = tiny_model_factory()
    prompt = torch.randint(0, MASK, (2, 5), generator=torch.Generator().manual_seed(1))
    latents = torch.randn(2, 13, 3, generator=torch.Generator().manual_seed(2))

    def rule():
        return build_sampler(name, mask_token_id=MASK, temperature=1.0, generator=torch.Generator().manual_seed(0))

    plain, _, nfe = drive_by_hand(model, rule(), prompt, 8, 8, 8)
    tokens, carried, nfe_state = drive_by_hand(model, rule(), prompt, 8, 8, 8, latents=latents)
    assert torch.equal(tokens, plain) and nfe_state == nfe
    assert carried is latents  # a masked rule moves tokens only


def test_step_returns_the_type_it_was_given():
    sampler = build_sampler("low_confidence", mask_token_id=4)
    sampler.set_timesteps(2)
    canvas = torch.tensor([[1, 4, 4, 4]])
    logits = torch.randn(1, 4, 5, generator=torch.Generator().manual_seed(0))
    sampler.set_region(1, 3, canvas)
    out = sampler.step(logits, sampler.timesteps[0], canvas)
    assert isinstance(out.prev_sample, torch.Tensor) and out.pred_original_sample.shape == (1, 4)
    assert int((out.prev_sample[:, 1:3] != 4).sum()) == 1 and out.prev_sample[0, 3] == 4  # 2 masks over 2 steps
    state = SamplerState(canvas, torch.zeros(1, 4, 2))
    out_state = sampler.step(logits, sampler.timesteps[0], state)
    assert isinstance(out_state.prev_sample, SamplerState)
    assert torch.equal(out_state.prev_sample.tokens, out.prev_sample)
    assert out_state.prev_sample.latents is state.latents
    assert torch.equal(canvas, torch.tensor([[1, 4, 4, 4]]))  # the input is never written


def test_region_reveal_counts_follow_the_timestep():
    """The step's reveal count is the region's column at t, so the loop needs no hidden step counter."""
    sampler = build_sampler("low_confidence", mask_token_id=4)
    sampler.set_timesteps(3)
    canvas = torch.tensor([[1, 4, 4, 4, 4, 4]])
    sampler.set_region(1, 6, canvas)
    assert sampler.region.num_transfer.tolist() == [[2, 2, 1]]
    logits = torch.randn(1, 6, 5, generator=torch.Generator().manual_seed(0))
    revealed = [int((sampler.step(logits, t, canvas).prev_sample != 4).sum()) - 1 for t in sampler.timesteps]
    assert revealed == [2, 2, 1]


def test_contract_misuse_is_a_clear_error():
    sampler = build_sampler("entropy", mask_token_id=4)
    canvas = torch.tensor([[1, 4, 4]])
    logits = torch.zeros(1, 3, 5)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sampler.set_region(1, 3, canvas)
    sampler.set_timesteps(2)
    with pytest.raises(RuntimeError, match="set_region"):
        sampler.step(logits, sampler.timesteps[0], canvas)
    with pytest.raises(ValueError, match="block_start and block_end"):
        sampler.step(logits, sampler.timesteps[0], canvas, block_start=1)
    with pytest.raises(ValueError, match="not inside"):
        sampler.set_region(1, 9, canvas)
    sampler.set_region(1, 3, canvas)
    sampler.set_timesteps(4)  # a new schedule drops the region whose counts were made for the old one
    with pytest.raises(RuntimeError, match="set_region"):
        sampler.step(logits, sampler.timesteps[0], canvas)


def test_each_loop_refuses_the_other_kind(tiny_model_factory):
    model = tiny_model_factory()
    with pytest.raises(ValueError, match="masked step rules"):
        generate(model, torch.zeros(1, 2, dtype=torch.long), gen_length=4, steps=4, block_length=4,
                 sampler=FlowEulerSampler())
    with pytest.raises(ValueError, match="continuous step rules"):
        sample_continuous(lambda x, t: x, build_sampler("random", mask_token_id=MASK), torch.zeros(1, 2),
                          num_steps=2)


# ---------------------------------------------------------------------------------------------- latents in the loop


class LatentReader(torch.nn.Module):
    """A hybrid-model stand-in whose prediction at each position is the token id stored in the first latent channel
    there: the loop decodes the latents' tokens only if every call gets the latents of exactly its window. It
    records every call, and its signature has no **kwargs, so an unexpected argument would fail."""

    def __init__(self, vocab: int = 8, context: int = 64):
        super().__init__()
        self.vocab = vocab
        self.config = SimpleNamespace(mask_token_id=vocab - 1, max_position_embeddings=context, eos_token_id=None,
                                      logit_shift=False, num_hidden_layers=1)
        self.calls = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=False, latents=None):
        self.calls.append((input_ids.shape, None if latents is None else latents.clone()))
        # p = 0.74 on the latent's token: below the threshold rule's 0.9, so blocks take several steps
        logits = 3.0 * F.one_hot(latents[..., 0].long(), self.vocab).float()  # [B, n, V]
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("cfg_scale", [0.0, 1.0])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("name", ["low_confidence", "threshold"])
def test_generate_hands_the_state_latents_to_every_model_call(name, cache, cfg_scale):
    model = LatentReader()
    prompt = torch.tensor([[1, 2, 3], [3, 2, 1]])
    target = torch.randint(0, 7, (2, 3 + 8), generator=torch.Generator().manual_seed(0))  # never [MASK] = 7
    latents = torch.stack([target.float(), torch.arange(11.0).expand(2, -1)], dim=-1)  # [B, L, 2]: token, position
    out = generate(model, prompt, gen_length=8, steps=8, block_length=4, sampler=name, cache=cache,
                   cfg_scale=cfg_scale, latents=latents)
    assert torch.equal(out.sequences[:, 3:], target[:, 3:])
    assert torch.equal(out.latents, latents) and out.latents is not latents  # carried, and the input left alone
    batch = 4 if cfg_scale > 0 else 2  # the CFG batch shares the latents
    for shape, seen in model.calls:
        assert seen.shape == (batch, shape[1], 2) and shape[0] == batch
        positions = seen[0, :, 1]
        assert torch.equal(positions, torch.arange(positions[0], positions[0] + shape[1]).float())
    if cache == "none":
        assert all(shape[1] == 11 for shape, _ in model.calls)
    else:  # later steps of a block run a window, not the whole canvas
        assert any(shape[1] < 11 for shape, _ in model.calls)


def test_latents_of_the_wrong_shape_are_an_error():
    with pytest.raises(ValueError, match=r"latents \(2, 10, 2\) must be"):
        generate(LatentReader(), torch.zeros(2, 3, dtype=torch.long), gen_length=8, steps=8, block_length=4,
                 latents=torch.zeros(2, 10, 2))


# ---------------------------------------------------------------------------------------------- the registry


def test_registry_lists_every_rule_once_with_its_kind():
    assert sorted(REGISTRY) == sorted(MASKED_RULES + CONTINUOUS_RULES)  # a dict: each name once
    assert list(SAMPLERS) == [n for n in REGISTRY if REGISTRY[n].kind == "masked"] == MASKED_RULES
    assert list(CONTINUOUS_SAMPLERS) == [n for n in REGISTRY if REGISTRY[n].kind == "continuous"] == CONTINUOUS_RULES
    for name in MASKED_RULES:
        rule = build_sampler(name, mask_token_id=MASK)
        assert isinstance(rule, MaskedSampler) and rule.kind == REGISTRY[name].kind == "masked"
    for name in CONTINUOUS_RULES:
        rule = build_continuous_sampler(name)
        assert isinstance(rule, Sampler) and rule.kind == REGISTRY[name].kind == "continuous"
    assert "euler" not in SAMPLERS and "low_confidence" not in CONTINUOUS_SAMPLERS


def test_unknown_names_name_the_valid_choices(tiny_model_factory):
    with pytest.raises(ValueError, match="unknown sampler 'greedy'") as err:
        build_sampler("greedy", mask_token_id=MASK)
    assert all(name in str(err.value) for name in MASKED_RULES)
    with pytest.raises(ValueError, match="unknown flow sampler 'lms'") as err:
        build_continuous_sampler("lms")
    assert all(name in str(err.value) for name in CONTINUOUS_RULES)
    with pytest.raises(ValueError, match="'heun' is a continuous sampler"):
        generate(tiny_model_factory(), torch.zeros(1, 2, dtype=torch.long), gen_length=4, steps=4, block_length=4,
                 sampler="heun")
    with pytest.raises(ValueError, match="'factor' is a masked sampler"):
        build_continuous_sampler("factor")
    with pytest.raises(ValueError, match="bad options for sampler 'euler'"):
        build_continuous_sampler("euler", threshold=0.9)


def test_a_registered_rule_is_found_by_name_everywhere(tiny_model_factory):
    class FirstMask(MaskedSampler):
        """Reveal the leftmost masked position of the block, whatever the logits."""

        def _step(self, logits, t, sample, block, num_transfer):
            prev = sample.clone()
            masked = (sample[:, block] == self.mask_token_id).long()  # [B, N]
            first = masked.argmax(-1)  # [B]
            rows = torch.arange(sample.shape[0])
            x0 = self.predict(self.forbid_mask(logits))
            prev[rows, block.start + first] = x0[rows, block.start + first]
            return prev, x0

    register_sampler("first_mask", "masked", FirstMask)
    try:
        assert "first_mask" in SAMPLERS and sampler_entry("first_mask").kind == "masked"
        out = generate(tiny_model_factory(), torch.zeros(1, 2, dtype=torch.long), gen_length=4, steps=4,
                       block_length=4, sampler="first_mask")
        assert not (out.sequences == MASK).any()
        with pytest.raises(ValueError, match="already registered"):
            register_sampler("first_mask", "masked", FirstMask)
        with pytest.raises(ValueError, match="unknown sampler kind"):
            register_sampler("other", "discrete", FirstMask)
    finally:
        REGISTRY.pop("first_mask", None)
    assert "first_mask" not in SAMPLERS


# ---------------------------------------------------------------------------------------------- layers


def _imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_step_rules_and_loops_never_import_train_data_or_pipelines():
    package = Path(__file__).parents[2] / "textdiff" / "samplers"
    for path in sorted(package.glob("*.py")):
        banned = ("textdiff.train", "textdiff.data", "textdiff.rl", "textdiff.pipelines")
        leaks = [m for m in _imports(path) if m.startswith(banned)]
        assert not leaks, f"{path.name} imports {leaks}"
