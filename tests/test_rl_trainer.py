"""CoupledGRPOTrainer on TRL's real GRPOTrainer code paths, with a tiny character-level masked-diffusion policy."""

import pytest
import torch
from datasets import Dataset
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from trl import GRPOTrainer

from textdiff import TextDiffConfig, TextDiffModel
from textdiff.rl.trainer import CoupledGRPOConfig, CoupledGRPOTrainer
from textdiff.samplers import generate

CHARS = list("abcdefghsy ")
LETTERS = "abcdefgh"


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<|endoftext|>": 0, "[MASK]": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   mask_token="[MASK]")


@pytest.fixture
def policy_dir(tmp_path):
    """A tiny random masked-diffusion policy + tokenizer saved to disk (TRL reloads the beta > 0 reference)."""
    tok = _tokenizer()
    torch.manual_seed(0)
    model = TextDiffModel(TextDiffConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, max_position_embeddings=32, mask_token_id=1, eos_token_id=0, pad_token_id=0))
    path = tmp_path / "policy"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _dataset() -> Dataset:
    # "say c" with variable-length prompts ("say  c" too) so TRL left-pads some of them
    return Dataset.from_list([{"prompt": "say " + " " * (i % 2) + c, "letter": c} for i, c in enumerate(LETTERS * 4)])


def letter_reward(completions, letter, **kwargs):
    return [sum(ch == x for ch in c) / 6 for c, x in zip(completions, letter)]


def _trainer(policy_dir, tmp_path, **overrides) -> CoupledGRPOTrainer:
    options = {
        "output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 8, "num_generations": 4,
        "max_completion_length": 6, "diffusion_steps": 6, "learning_rate": 0.1, "max_steps": 2, "logging_steps": 1,
        "report_to": "none", "use_cpu": True, "disable_dropout": True, "temperature": 1.0, "seed": 0,
        "save_strategy": "no", **overrides,
    }
    return CoupledGRPOTrainer(policy_dir, letter_reward, args=CoupledGRPOConfig(**options), train_dataset=_dataset(),
                              processing_class=_tokenizer())


def test_every_overridden_method_still_exists_on_grpo_trainer():
    for name in CoupledGRPOTrainer.OVERRIDDEN:
        assert hasattr(GRPOTrainer, name), f"trl's GRPOTrainer no longer has {name}"
        assert name in CoupledGRPOTrainer.__dict__, f"{name} is listed but not overridden"
        assert name in CoupledGRPOTrainer.__doc__
    overridden = {n for n, v in CoupledGRPOTrainer.__dict__.items() if callable(v) and hasattr(GRPOTrainer, n)}
    assert overridden == set(CoupledGRPOTrainer.OVERRIDDEN) | {"__init__"}


def test_trl_range_is_pinned(monkeypatch):
    import textdiff.rl.trainer as module

    module._check_trl_version()  # the installed trl is in range
    monkeypatch.setattr(module, "package_version", lambda name: "1.17.0")
    with pytest.raises(ImportError, match=r"trl >=1.16.0 <1.17.0"):
        module._check_trl_version()


@pytest.mark.parametrize(
    "estimator, accumulation",
    [("coupled", 1), ("coupled", 2), ("d1", 2)],
    ids=["coupled", "coupled-ga2-spg2", "d1-ga2-spg2"],
)
def test_lr0_two_iterations_log_exactly_zero_kl_and_clipping(policy_dir, tmp_path, estimator, accumulation):
    """Mask consistency: with lr = 0 the old, reference and current policies are one model, so every logged KL and
    clip ratio is exactly 0 — only if each inner iteration scores a row with the same masks at rollout time and in
    the loss, after TRL's shuffle and split (steps_per_generation = gradient_accumulation_steps = 2 here)."""
    trainer = _trainer(policy_dir, tmp_path, estimator=estimator, learning_rate=0.0, beta=0.04, num_iterations=2,
                       max_steps=4, gradient_accumulation_steps=accumulation, p_mask_prompt=0.3)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "kl" in h]
    assert len(logs) == 4
    for h in logs:
        assert h["kl"] == 0.0 and h["clip_ratio/region_mean"] == 0.0, h
        assert h["clip_ratio/low_mean"] == 0.0 and h["clip_ratio/high_mean"] == 0.0
    # the two inner iterations really use different (fresh) masks
    buffered = trainer._buffered_inputs[0]
    old = buffered["old_logps_all"]  # [B, K=2, C]
    assert old.shape[1] == 2 and not torch.allclose(old[:, 0], old[:, 1])
    assert buffered["ref_logps_all"].shape == old.shape


def test_the_consistency_check_has_teeth(policy_dir, tmp_path):
    """The same lr = 0 run with the loss reading the wrong inner iteration's masks logs a non-zero KL."""

    class WrongIteration(CoupledGRPOTrainer):
        def _compute_loss(self, model, inputs):
            inputs = dict(inputs)
            k = (self._step // self.args.steps_per_generation) % self.num_iterations
            inputs["old_logps_all"] = inputs["old_logps_all"].flip(1)  # old / ref of the other iteration
            inputs["ref_logps_all"] = inputs["ref_logps_all"].flip(1)
            assert k in (0, 1)
            return super()._compute_loss(model, inputs)

    args = CoupledGRPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_generations=4, max_completion_length=6,
        diffusion_steps=6, learning_rate=0.0, max_steps=2, logging_steps=1, report_to="none", use_cpu=True,
        disable_dropout=True, beta=0.04, num_iterations=2, save_strategy="no")
    trainer = WrongIteration(policy_dir, letter_reward, args=args, train_dataset=_dataset(),
                             processing_class=_tokenizer())
    trainer.train()
    assert any(h["kl"] > 0 for h in trainer.state.log_history if "kl" in h)


@pytest.mark.parametrize("estimator", ["coupled", "d1"])
def test_log_probs_are_scored_on_the_rollout_canvas_whatever_the_batch(policy_dir, tmp_path, estimator):
    """TRL pads completions only to the longest in the batch; a masked model reads the canvas length, so the trainer
    restores the EOS tail: a row's log-probs are those of its full 6-token rollout canvas, equal whether the batch's
    longest completion has 3 or 6 tokens, and equal to the estimator on the canvas as generated."""
    from textdiff.rl.estimators import coupled_estimate, d1_estimate, row_mask_seeds

    trainer = _trainer(policy_dir, tmp_path, estimator=estimator)
    tok, model = _tokenizer(), trainer.model
    prompt = tok("say a")["input_ids"]
    short = tok("aa")["input_ids"] + [0]  # answer + EOS: 3 of the 6 canvas tokens
    long = tok("bbbbbb")["input_ids"]  # fills the canvas
    pad = [0] * (6 - len(short))

    def scored(rows):  # TRL's layout: prompt + completion padded to the batch's longest, completion_mask 0 on pads
        C = max(len(c) for c in rows)
        ids = torch.tensor([prompt + c + [0] * (C - len(c)) for c in rows])
        mask = torch.tensor([[1] * len(prompt) + [1] * len(c) + [0] * (C - len(c)) for c in rows])
        with torch.no_grad():
            return trainer._get_per_token_logps_and_entropies(model, ids, mask, C)[0]

    alone = scored([short])  # [1, 3]
    beside_long = scored([short, long])[:1, :3]  # [1, 3] of a [2, 6] batch
    torch.testing.assert_close(alone, beside_long, rtol=0, atol=1e-6)

    canvas = torch.tensor([prompt + short + pad])  # the rollout as generate() returned it
    seeds = row_mask_seeds(torch.tensor([prompt + short]), None, rollout_id=trainer._rollout_id, iteration=0)
    estimate = coupled_estimate if estimator == "coupled" else d1_estimate
    with torch.no_grad(), trainer.accelerator.autocast():  # TRL's default bf16 autocast, as in the trainer
        reference = estimate(model, canvas, torch.ones_like(canvas), 6, mask_token_id=1, seeds=seeds).logps[:, :3]
    torch.testing.assert_close(alone, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"])
def test_trl_smoke_per_loss_type_changes_every_parameter_and_logs_the_loss(policy_dir, tmp_path, loss_type):
    trainer = _trainer(policy_dir, tmp_path, loss_type=loss_type, beta=0.04 if loss_type == "bnpo" else 0.0)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    assert all("loss" in h for h in trainer.state.log_history[:-1])
    for name, param in before.items():
        assert not torch.equal(param, trainer.model.get_parameter(name)), f"{name} did not change"


@pytest.mark.parametrize("estimator, all_masked_view", [("coupled", False), ("d1", True)])
def test_other_estimators_train(policy_dir, tmp_path, estimator, all_masked_view):
    trainer = _trainer(policy_dir, tmp_path, estimator=estimator, all_masked_view=all_masked_view)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    assert sum(not torch.equal(p, trainer.model.get_parameter(n)) for n, p in before.items()) == len(before)


@pytest.mark.parametrize("scale_rewards", ["none", "group"])
def test_groups_without_reward_variance_do_not_move_the_policy(policy_dir, tmp_path, scale_rewards):
    """Eight rewards of 0.1 leave TRL float32 advantages of +-7e-9 (+-7e-5 after std scaling); Adam would turn them
    into lr-sized random steps. They are exact zeros, so a run without any reward signal changes nothing."""

    def constant(completions, **kwargs):
        return [0.1] * len(completions)

    args = CoupledGRPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_generations=8, max_completion_length=6,
        diffusion_steps=6, learning_rate=0.1, max_steps=2, logging_steps=1, report_to="none", use_cpu=True,
        save_strategy="no", scale_rewards=scale_rewards)
    trainer = CoupledGRPOTrainer(policy_dir, constant, args=args, train_dataset=_dataset(), processing_class=_tokenizer())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert all(torch.equal(p, trainer.model.get_parameter(n)) for n, p in before.items())
    assert all(h["grad_norm"] == 0.0 for h in trainer.state.log_history if "grad_norm" in h)


@pytest.mark.parametrize("sampler, options", [("low_confidence", {}), ("threshold", {"threshold": 0.5}),
                                              ("entropy", {}), ("ancestral", {})])
def test_rollouts_are_textdiff_generate_with_any_rule(policy_dir, tmp_path, sampler, options):
    trainer = _trainer(policy_dir, tmp_path, sampler=sampler, sampler_options=options, temperature=0.0,
                       block_length=3)
    prompts = [[7, 8, 12, 2], [7, 8, 12, 3, 3]]  # "say a", "say bb": left-padded to one width
    completions, logprobs = trainer._generate_single_turn(prompts, None, {}, 1)
    assert logprobs is None and len(completions) == 2
    model = trainer.model.eval()
    for prompt, completion in zip(prompts, completions):
        # greedy rollouts of a left-padded batch equal decoding each prompt alone
        alone = generate(model, torch.tensor([prompt]), gen_length=6, steps=6, block_length=3, sampler=sampler,
                         **options).sequences[0, len(prompt):].tolist()
        if 0 in alone:
            alone = alone[: alone.index(0) + 1]  # cut after the first EOS (pad == EOS)
        assert completion == alone
        assert 1 <= len(completion) <= 6 and 1 not in completion  # no [MASK] left


def test_bad_configuration_is_rejected(policy_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown estimator 'elbo'"):
        CoupledGRPOConfig(output_dir=str(tmp_path), use_cpu=True, estimator="elbo")
    with pytest.raises(ValueError, match="unknown sampler 'greedy'"):
        CoupledGRPOConfig(output_dir=str(tmp_path), use_cpu=True, sampler="greedy")
    with pytest.raises(ValueError, match="t_min"):
        CoupledGRPOConfig(output_dir=str(tmp_path), use_cpu=True, t_min=0.7, t_max=0.3)
    with pytest.raises(ValueError, match="not a multiple of block_length"):
        CoupledGRPOConfig(output_dir=str(tmp_path), use_cpu=True, max_completion_length=10, block_length=4)
    causal = TextDiffModel.from_pretrained(policy_dir)
    causal.config.attention_mode = "causal"
    with pytest.raises(ValueError, match="causal"):
        CoupledGRPOTrainer(causal, letter_reward, args=CoupledGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
                           train_dataset=_dataset(), processing_class=_tokenizer())
    in_memory = TextDiffModel(TextDiffModel.from_pretrained(policy_dir).config)
    in_memory.config._name_or_path = ""
    with pytest.raises(ValueError, match="save_pretrained"):
        CoupledGRPOTrainer(in_memory, letter_reward,
                           args=CoupledGRPOConfig(output_dir=str(tmp_path), use_cpu=True, beta=0.1, report_to="none"),
                           train_dataset=_dataset(), processing_class=_tokenizer())


def test_cli_rl_reports_a_missing_sft_checkpoint_in_one_line(capsys, tmp_path):
    from textdiff.cli import main

    code = main(["rl", "recipes/rl/countdown_d1.yaml", f"rl.init_from={tmp_path / 'missing'}",
                 f"run.output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and "textdiff rl: error: rl.init_from=" in err and "SFT recipe" in err
    assert main(["rl", "recipes/rl/countdown_d1.yaml", "rl.estimatr=d1"]) == 2
    assert "did you mean 'rl.estimator'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("estimator, learning_rate", [("coupled", 5e-4), ("d1", 2e-3)])
def test_reward_goes_up_on_a_toy_task(tmp_path, estimator, learning_rate):
    """The reference's T5: "say c" for 8 letters, reward = share of the 6 completion tokens equal to c, a tiny
    random policy trained from scratch by GRPO alone (about 30 s each on 2 CPU cores). The 1/t-weighted coupled
    estimate needs a smaller learning rate: at 2e-3 it collapses to one token for every prompt (reward ~0.12)."""
    tok = _tokenizer()
    torch.manual_seed(0)
    model = TextDiffModel(TextDiffConfig(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=128, max_position_embeddings=32, mask_token_id=1, eos_token_id=0, pad_token_id=0))
    model.save_pretrained(tmp_path / "policy")
    args = CoupledGRPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=32, num_generations=8, max_completion_length=6,
        diffusion_steps=6, learning_rate=learning_rate, epsilon=0.5, scale_rewards="none", loss_type="bnpo", max_steps=150,
        logging_steps=10, report_to="none", use_cpu=True, disable_dropout=True, seed=0, save_strategy="no",
        estimator=estimator)
    trainer = CoupledGRPOTrainer(str(tmp_path / "policy"), letter_reward, args=args,
                                 train_dataset=Dataset.from_list([{"prompt": f"say {c}", "letter": c} for c in LETTERS] * 64),
                                 processing_class=tok)
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last >= 2 * first and last >= 0.25, rewards  # observed: coupled 0.11 -> 0.31, d1 0.11 -> 0.27


def test_held_out_accuracy_is_the_same_in_left_padded_batches_as_one_by_one(policy_dir):
    """`evaluate_task` decodes left-padded batches (`left_pad`); every completion must equal the one decoded alone."""
    from textdiff.data.tasks import Problem, Task
    from textdiff.evaluation import evaluate_task as task_accuracy
    from textdiff.pipelines.text import left_pad

    class SayTask(Task):
        name = "say"

        def sample(self, rng):
            raise AssertionError("this test lists its problems; it never samples them")

        def verify(self, problem, completion):
            return completion.strip().startswith(problem.answer)

    ids, mask = left_pad([[5, 6], [7], [8, 9, 10]], pad_token_id=0)
    assert ids.tolist() == [[0, 5, 6], [0, 0, 7], [8, 9, 10]] and mask.tolist() == [[0, 1, 1], [0, 0, 1], [1, 1, 1]]
    model = TextDiffModel.from_pretrained(policy_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(policy_dir)
    problems = [Problem("say " + " " * (i % 3) + c, c, {}) for i, c in enumerate(LETTERS)]
    options = dict(gen_length=4, steps=4, block_length=4)
    batched = task_accuracy(model, tokenizer, SayTask(), problems, batch_size=3, **options)
    alone = [task_accuracy(model, tokenizer, SayTask(), [p], batch_size=1, **options) for p in problems]
    assert [e["completion"] for e in batched["examples"]] == [a["examples"][0]["completion"] for a in alone]
    assert batched["accuracy"] == sum(a["accuracy"] for a in alone) / len(alone)
