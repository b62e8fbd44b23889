"""Block diffusion (`family: bd3`): the vectorised [x_t ; x_0] loss equals block-by-block denoising of each block
after its clean past, the 2L x 2L mask element-wise, exact cached decoding, bad input, and the CLI path."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_config
from textdiff import TextDiffModel
from textdiff.config import RecipeError, load_recipe
from textdiff.families.bd3 import BD3Objective, bd3_attention_mask, block_ids
from textdiff.samplers import generate
from textdiff.schedules import sample_timesteps, uniform_noise

MASK, BLOCK = 66, 4


def bd3_model(seed: int = 0, **overrides) -> TextDiffModel:
    torch.manual_seed(seed)
    return TextDiffModel(tiny_config(attention_mode="block_causal", block_size=BLOCK, **overrides)).eval()


def independent_loss(model, batch, objective, seed):
    """The BD3 loss written out block by block: redraw the objective's noise (one t per block, stratified over
    batch x blocks, then one uniform per position), and for every block b of every row run the model on
    [clean tokens before b ; noisy block b] with its plain block-causal attention (blocks from the prompt's end, as
    `generate` decodes), CE of the masked tokens of b without the [MASK] column, weight 1/t_b (linear schedule)."""
    generator = torch.Generator().manual_seed(seed)
    ids = batch["input_ids"]
    B, L = ids.shape
    prompt = batch["prompt_mask"].sum(1) if "prompt_mask" in batch else torch.zeros(B, dtype=torch.long)
    valid = batch["attention_mask"].sum(1) if "attention_mask" in batch else torch.full((B,), L)
    num_blocks = math.ceil(L / BLOCK)
    method = objective.antithetic_sampler if objective.antithetic else "uniform"
    t = sample_timesteps(B * num_blocks, eps=objective.eps, method=method, generator=generator).view(B, num_blocks)
    u = uniform_noise((B, L), generator=generator, per_example=True)
    per_row = []
    for r in range(B):
        total, P, end_of_row = 0.0, int(prompt[r]), int(valid[r])
        for k, start in enumerate(range(P, end_of_row, BLOCK)):
            end = min(start + BLOCK, end_of_row)
            masked = u[r, start:end] < t[r, k]
            noisy = torch.where(masked, torch.full_like(ids[r, start:end], MASK), ids[r, start:end])
            sequence = torch.cat([ids[r, :start], noisy])[None]  # [1, end]
            logits = model(sequence, block_offset=P).logits[0, start:end].double()  # [block, V]
            logits[:, MASK] = -torch.inf
            ce = F.cross_entropy(logits, ids[r, start:end], reduction="none")
            total = total + (ce * masked).sum() / t[r, k]
        per_row.append(total)
    per_row = torch.stack(per_row)
    if objective.normalization == "answer":
        return (per_row / (valid - prompt)).mean()
    return per_row.sum() / (valid - prompt).sum()


def sft_batch(prompt_lengths, length, valid_lengths=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(prompt_lengths)
    batch = {"input_ids": torch.randint(0, 60, (B, length), generator=g),
             "prompt_mask": torch.arange(length)[None] < torch.tensor(prompt_lengths)[:, None]}
    if valid_lengths is not None:
        batch["attention_mask"] = (torch.arange(length)[None] < torch.tensor(valid_lengths)[:, None]).long()
    return batch


CASES = {
    "pretrain": ({"input_ids": torch.randint(0, 60, (3, 16), generator=torch.Generator().manual_seed(3))}, "token"),
    # prompts of 3, 4 and 6 tokens: blocks start at each row's prompt end, the last block is partial for some
    "sft_token": (sft_batch([3, 4, 6], 17), "token"),
    # answer canvases padded to the batch (attention-masked padding at the end of shorter rows)
    "sft_answer_padded": (sft_batch([3, 5, 2], 16, valid_lengths=[11, 13, 16]), "answer"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("antithetic", [True, False])
def test_vectorised_loss_equals_block_by_block_denoising(case, antithetic):
    batch, normalization = CASES[case]
    model = bd3_model().double()
    objective = BD3Objective(block_size=BLOCK, mask_token_id=MASK, normalization=normalization, antithetic=antithetic)
    loss = objective(model, batch, generator=torch.Generator().manual_seed(7)).loss
    expected = independent_loss(model, batch, objective, seed=7)
    # a float64 model: the logits agree to ~1e-15; what is left is the objective's float32 CE reduction (a wrong
    # weight, block boundary or visible noisy block moves the loss by far more than 1e-6)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=0)


def test_each_block_has_its_own_time():
    """Timesteps are drawn per block (stratified over batch x blocks): one t per block, shared by its tokens."""
    objective = BD3Objective(block_size=BLOCK, mask_token_id=MASK)
    slots, num_slots = objective._time_slots(torch.zeros(2, 10, dtype=torch.long),
                                             torch.arange(10)[None] < torch.tensor([[1], [4]]))
    assert num_slots == 3
    assert slots.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 1, 2], [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]]
    # many blocks of many rows: the per-block mask rates spread over (0, 1) instead of sharing one t per row
    model = bd3_model()
    batch = {"input_ids": torch.randint(0, 60, (1, 64))}
    captured = {}
    original = objective._denoise

    def spy(model, noisy_ids, *args):
        captured["noisy"] = noisy_ids
        return original(model, noisy_ids, *args)

    objective._denoise = spy
    objective(model, batch, generator=torch.Generator().manual_seed(0))
    rates = (captured["noisy"] == MASK).float().view(16, 4).mean(1)
    assert len(set(rates.tolist())) >= 3


def test_two_l_mask_equals_the_hand_written_one():
    # L = 6, blocks of 2 from position 0: n = noisy half (queries / keys 0-5), c = clean half (6-11)
    expected = [
        "110000 000000",  # n block 0: itself only
        "110000 000000",
        "001100 110000",  # n block 1: itself + clean block 0
        "001100 110000",
        "000011 111100",  # n block 2: itself + clean blocks 0, 1
        "000011 111100",
        "000000 110000",  # c block 0: clean block 0
        "000000 110000",
        "000000 111100",  # c block 1: clean blocks 0, 1
        "000000 111100",
        "000000 111111",  # c block 2: all clean blocks, never a noisy one
        "000000 111111",
    ]
    mask = bd3_attention_mask(block_ids(torch.tensor([0]), 6, 2))
    assert mask.shape == (1, 1, 12, 12)
    assert ["".join(str(int(v)) for v in row[:6]) + " " + "".join(str(int(v)) for v in row[6:])
            for row in mask[0, 0]] == expected


def test_two_l_mask_with_a_prompt_offset_and_padding():
    # L = 5, prompt of 1 token, blocks of 2 from the prompt's end: blocks [-1, 0, 0, 1, 1]; position 4 is padding
    expected = [
        "10000 00000",  # n prompt block -1: itself
        "01100 10000",  # n block 0: itself + the clean prompt
        "01100 10000",
        "00010 11100",  # n block 1: itself (its padding key hidden) + clean blocks -1, 0
        "00011 11100",  # the padding query sees itself
        "00000 10000",  # c block -1
        "00000 11100",  # c block 0
        "00000 11100",
        "00000 11110",  # c block 1 without the padding key
        "00000 11111",
    ]
    blocks = block_ids(torch.tensor([1]), 5, 2)
    assert blocks.tolist() == [[-1, 0, 0, 1, 1]]
    mask = bd3_attention_mask(blocks, torch.tensor([[1, 1, 1, 1, 0]]))
    assert ["".join(str(int(v)) for v in row[:5]) + " " + "".join(str(int(v)) for v in row[5:])
            for row in mask[0, 0]] == expected


@pytest.fixture(scope="module")
def trained_bd3_model():
    """A tiny bd3 model after 30 BD3 steps on a repeating pattern (so its decodes depend on the context)."""
    model = bd3_model(seed=1).train()
    objective = BD3Objective(block_size=BLOCK, mask_token_id=MASK)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = (torch.arange(32)[None] * 7 + torch.arange(8)[:, None] * 3) % 60  # [8, 32]
    for step in range(30):
        loss = objective(model, {"input_ids": data}, generator=torch.Generator().manual_seed(step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


RULES = {
    "low_confidence": {"sampler": "low_confidence", "steps": 8},
    "threshold": {"sampler": "threshold", "steps": 4, "threshold": 0.5},
}


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("block_length", [4, 8])
def test_cached_decoding_equals_cache_free_decoding(trained_bd3_model, rule, block_length):
    for prompt_length in (1, 3, 4, 6, 9):  # P % block_size != 0 included
        prompt = (torch.arange(prompt_length)[None] * 7 + torch.tensor([[0], [3]]) * 3) % 60  # [2, P]
        options = {"gen_length": 16, "block_length": block_length, **RULES[rule]}
        reference = generate(trained_bd3_model, prompt, **options)
        for cache in ("prefix", "dual"):
            out = generate(trained_bd3_model, prompt, cache=cache, **options)
            assert torch.equal(out.sequences, reference.sequences), (cache, prompt_length)
            assert out.nfe == reference.nfe


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_left_padded_batch_equals_cache_free_one_by_one(trained_bd3_model, cache):
    prompts = [(torch.arange(n) * 7 + 3 * r) % 60 for r, n in enumerate((2, 7, 5, 4))]
    width = max(len(p) for p in prompts)
    batch, attention = torch.full((4, width), 65), torch.zeros(4, width, dtype=torch.long)
    for r, p in enumerate(prompts):
        batch[r, width - len(p):], attention[r, width - len(p):] = p, 1
    options = {"gen_length": 16, "steps": 8, "block_length": 8}
    out = generate(trained_bd3_model, batch, attention_mask=attention, cache=cache, **options)
    for r, p in enumerate(prompts):
        alone = generate(trained_bd3_model, p[None], **options)  # cache-free, alone
        assert torch.equal(out.sequences[r, width:], alone.sequences[0, len(p):]), r


class WindowRecorder(torch.nn.Module):
    """The model, recording (first query position, number of queries, number of keys) of every call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.calls = model, model.config, []

    def forward(self, input_ids, cache=None, **kwargs):
        first = cache.seq_len if cache is not None else 0
        self.calls.append((first, input_ids.shape[1], first + input_ids.shape[1]))
        return self.model(input_ids, cache=cache, **kwargs)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_decoding_runs_only_the_finished_block_and_the_current_one(trained_bd3_model, cache):
    """BD3's cache: a block's first step runs the previous (now finished) block and the block on the cached past,
    later steps the block alone; no position after the block is ever computed."""
    P, block = 3, 4
    recorder = WindowRecorder(trained_bd3_model)
    prompt = (torch.arange(P)[None] * 7) % 60
    out = generate(recorder, prompt, gen_length=12, steps=6, block_length=block, cache=cache)  # 2 steps a block
    assert recorder.calls == [(0, P + block, P + block), (P, block, P + block),  # block 0: prompt + block, block
                              (P, 2 * block, P + 2 * block), (P + block, block, P + 2 * block),  # block 1
                              (P + block, 2 * block, P + 3 * block), (P + 2 * block, block, P + 3 * block)]
    assert torch.equal(out.sequences, generate(trained_bd3_model, prompt, gen_length=12, steps=6,
                                               block_length=block).sequences)


def test_training_reads_what_decoding_reads(trained_bd3_model):
    """The decode-time call (canvas = clean prefix + the block with masks + masked future, blocks from the prompt
    end) gives the block the logits the [x_t ; x_0] training pass gives it."""
    model, P, L = trained_bd3_model, 3, 11
    ids = (torch.arange(L)[None] * 7) % 60  # [1, 11]: prompt 3, answer blocks [3, 7), [7, 11)
    noisy = ids.clone()
    noisy[0, 7:11:2] = MASK  # block 1 partly masked
    objective = BD3Objective(block_size=BLOCK, mask_token_id=MASK)
    prompt_mask = torch.arange(L)[None] < P
    train_logits = objective._denoise(model, noisy, ids, None, prompt_mask, {})  # [1, L, V]
    canvas = torch.cat([ids[:, :7], noisy[:, 7:11], torch.full((1, 5), MASK)], dim=1)  # masked future after it
    decode_logits = model(canvas, block_offset=P).logits
    torch.testing.assert_close(train_logits[:, 7:11], decode_logits[:, 7:11], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- bad input

BAD_RECIPES = [
    (["data.seq_len=30"], "data.seq_len 30 is not a multiple of model.block_size 8"),
    (["sample.block_length=4", "sample.gen_length=64"], "sample.block_length 4 is not a multiple of the model's"),
    (["data.task=arithmetic", "data.answer_length=12", "sample.gen_length=12", "sample.steps=12",
      "sample.block_length=12"], "data.answer_length 12 is not a multiple of model.block_size 8"),
    (["model.time_conditioning=true"], "model.time_conditioning"),
    (["objective.logit_shift=true"], "logit_shift: masked-family options that block diffusion does not support"),
    (["objective.random_truncation=0.1"], "random_truncation"),
    (["model.attention_mode=bidirectional"], "family bd3 trains with 'block_causal' attention"),
]


@pytest.mark.parametrize("overrides, message", BAD_RECIPES, ids=[o[0] for o, _ in BAD_RECIPES])
def test_bad_recipes_are_refused_with_one_line(overrides, message):
    with pytest.raises(RecipeError, match="^[^\n]*$") as err:
        load_recipe("recipes/bd3/stdlib_pretrain.yaml", overrides)
    assert message in str(err.value)


def test_generate_refuses_a_block_length_that_splits_attention_blocks():
    with pytest.raises(ValueError, match="block_length 6 is not a multiple of the block-causal model's block_size 4"):
        generate(bd3_model(), torch.zeros(1, 3, dtype=torch.long), gen_length=12, steps=12, block_length=6)


def test_generate_refuses_prompts_longer_than_the_context():
    batch = torch.zeros(2, 60, dtype=torch.long)
    with pytest.raises(ValueError, match=r"prompt \(60\) \+ gen_length \(8\) exceeds the model's context 64"):
        generate(bd3_model(), batch, attention_mask=torch.ones_like(batch), gen_length=8, steps=8, block_length=4)


def test_llada_elbo_refuses_a_block_causal_model():
    from textdiff.evaluation.metrics.elbo import elbo_log_likelihood

    with pytest.raises(ValueError, match="block-causal \\(bd3\\) model, whose bound is BD3Objective.nll"):
        elbo_log_likelihood(bd3_model(), [1, 2], [3, 4], mc_num=2)


def test_objective_refuses_a_prompt_mask_that_is_not_a_prefix_and_a_mismatched_block_size():
    objective = BD3Objective(block_size=BLOCK, mask_token_id=MASK)
    ids = torch.randint(0, 60, (1, 8))
    with pytest.raises(ValueError, match="prompt_mask to be a prefix"):
        objective(bd3_model(), {"input_ids": ids, "prompt_mask": torch.tensor([[0, 1, 1, 0, 0, 0, 0, 0]]).bool()})
    with pytest.raises(ValueError, match="block_size 8 differs from the model's config.block_size 4"):
        BD3Objective(block_size=8, mask_token_id=MASK)(bd3_model(), {"input_ids": ids})


# ---------------------------------------------------------------------------------------------- CLI end to end

TINY = ["model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2",
        "model.num_key_value_heads=1", "model.intermediate_size=64", "model.block_size=4", "tokenizer.vocab_size=300",
        "data.max_valid_blocks=4", "trainer.max_steps=3", "trainer.per_device_train_batch_size=4",
        "trainer.eval_steps=null", "trainer.save_steps=null", "trainer.report_to=[]", "eval.elbo_samples=1",
        "sample.prompts=[]"]


def test_cli_trains_a_bd3_recipe_and_samples_its_checkpoint_with_exact_caches(tmp_path, capsys):
    from textdiff.cli import main
    from textdiff.modeling.checkpoint_io import load_model

    out, corpus = tmp_path / "run", tmp_path / "corpus.jsonl"  # one document per line
    corpus.write_text("".join(json.dumps({"text": f"def f{i}(x):\n    import os\n    return x + {i}\n" * 3}) + "\n"
                              for i in range(300)))
    rc = main(["train", "recipes/bd3/stdlib_pretrain.yaml", f"run.output_dir={out}", f"data.corpus={corpus}",
               "data.seq_len=32", "data.valid_percent=10", *TINY])
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["final_eval"]["eval_loss"] > 0
    assert "PPL <=" in capsys.readouterr().out  # validation reports the ELBO bound
    model = load_model(out / "final")
    assert (model.config.attention_mode, model.config.block_size, model.config.textdiff_family) == \
        ("block_causal", 4, "bd3")

    completions = {}
    for cache in ("none", "prefix", "dual"):
        rc = main(["sample", str(out / "final"), "--prompt", "def ", "--prompt", "import os", "--gen-length", "16",
                   "--steps", "8", "--block-length", "8", "--cache", cache, "--json"])
        assert rc == 0
        completions[cache] = [r["completion"] for r in json.loads(capsys.readouterr().out)]
    assert completions["prefix"] == completions["none"] == completions["dual"]

    rc = main(["sample", str(out / "final"), "--prompt", "def ", "--gen-length", "12", "--steps", "12",
               "--block-length", "6"])
    err = capsys.readouterr().err
    assert rc == 2 and "--block-length 6 is not a multiple of the model's block_size 4" in err
    assert len(err.strip().splitlines()) == 1


def test_sft_recipe_trains_with_blocks_from_the_prompt_end(tmp_path):
    """SFT (data.task): a few steps through the run skeleton, then the task evaluation decodes with the caches."""
    from textdiff.train.run import train_from_recipe

    recipe = load_recipe("recipes/bd3/stdlib_pretrain.yaml", TINY + [
        f"run.output_dir={tmp_path}", "data.task=arithmetic", "data.num_train_examples=32", "data.num_valid_examples=8",
        "data.answer_length=8", "sample.gen_length=8", "sample.steps=8", "sample.block_length=8",
        "objective.normalization=answer", "eval.task_problems=4", "data.max_length=64"])
    results = train_from_recipe(recipe)
    assert results["final_eval"]["eval_loss"] > 0
    assert results["task_eval"]["problems"] == 4


def test_coupled_grpo_refuses_a_block_causal_policy(tmp_path):
    from textdiff.rl.trainer import CoupledGRPOConfig, CoupledGRPOTrainer

    with pytest.raises(ValueError, match="the policy is block-causal"):
        CoupledGRPOTrainer(bd3_model(), reward_funcs=[lambda **kwargs: [0.0]],
                           args=CoupledGRPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                                  bf16=False))
