"""RL from a recipe: SFT checkpoint -> task prompts -> CoupledGRPOTrainer -> held-out accuracy curve -> results.json.

The chain: `textdiff train recipes/masked/countdown_sft.yaml` writes runs/masked_countdown/final; then
`textdiff rl recipes/rl/countdown_coupled_grpo.yaml` (rl.init_from = that directory) trains the policy with rewards
and reports greedy held-out test accuracy before, during (rl.eval_steps) and after RL.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, TrainerCallback, set_seed

from textdiff.config import Recipe
from textdiff.data import SFTCollator
from textdiff.data.tasks import Problem, Task, get_task
from textdiff.rl.rewards import TASK_REWARDS, get_reward
from textdiff.rl.trainer import CoupledGRPOConfig, CoupledGRPOTrainer
from textdiff.samplers.generate import generate
from textdiff.pipelines.text import decode_completion, left_pad
from textdiff.train.checkpoints import atomic_write_text
from textdiff.train.run import (
    claim_run_dir,
    common_training_arguments,
    excluded_train_keys,
    resume_checkpoint,
    save_atomically,
)


@torch.no_grad()
def task_accuracy(
    model, tokenizer, task: Task, problems: list[Problem], *, gen_length: int, steps: int, block_length: int,
    batch_size: int = 64,
) -> dict:
    """Greedy (temperature 0, low-confidence) decoding of every problem, left-padded in batches (identical to
    decoding one by one), scored by the task's verifier and reward. Returns accuracy, mean score, examples."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    encoder = SFTCollator(tokenizer, max_length=model.config.max_position_embeddings)  # the SFT prompt format
    correct, scores, examples = [], [], []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        ids, mask = left_pad([encoder.encode_prompt(p.prompt) for p in chunk], pad, device)
        width = ids.shape[1]
        out = generate(model, ids, attention_mask=mask, gen_length=gen_length, steps=steps,
                       block_length=block_length)
        for p, row in zip(chunk, out.sequences[:, width:].tolist()):
            completion = decode_completion(tokenizer, row, model.config.mask_token_id)
            ok = task.verify(p, completion)
            correct.append(ok)
            scores.append(task.score(p, completion))
            if len(examples) < 8:
                examples.append({"prompt": p.prompt, "answer": p.answer, "completion": completion, "correct": ok})
    model.train(was_training)
    return {"accuracy": sum(correct) / len(correct), "mean_reward": sum(scores) / len(scores),
            "problems": len(problems), "examples": examples}


class AccuracyCallback(TrainerCallback):
    """Held-out accuracy every `every` optimizer steps (and at the end), into `history`."""

    def __init__(self, evaluate, every: int | None):
        self.evaluate, self.every, self.history = evaluate, every, []

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and state.global_step % self.every == 0 and state.global_step < state.max_steps:
            self.history.append({"step": state.global_step, **self.evaluate()})
            _report(self.history[-1])


def _report(point: dict) -> None:
    if "accuracy" in point:
        tqdm.write(f"step {point['step']}: held-out accuracy {point['accuracy']:.3f} over {point['problems']} "
                   f"problems, mean task reward {point['mean_reward']:.3f}")  # on its own line, under the bar


def grpo_config(recipe: Recipe) -> CoupledGRPOConfig:
    """The `CoupledGRPOConfig` of a recipe: the `rl` section plus the optimizer settings of `trainer`."""
    r = recipe.rl
    return CoupledGRPOConfig(
        **common_training_arguments(recipe),
        disable_dropout=True,
        num_generations=r.num_generations,
        max_completion_length=r.gen_length,
        temperature=r.temperature,
        beta=r.beta,
        epsilon=r.epsilon,
        num_iterations=r.num_iterations,
        loss_type=r.loss_type,
        scale_rewards=r.scale_rewards,
        sync_ref_model=r.sync_ref_model,
        ref_model_sync_steps=r.ref_model_sync_steps,
        reward_weights=r.reward_weights,
        estimator=r.estimator,
        all_masked_view=r.all_masked_view,
        t_min=r.t_min,
        t_max=r.t_max,
        p_mask_prompt=r.p_mask_prompt,
        random_masking=r.random_masking,
        mask_seed=recipe.run.seed,
        diffusion_steps=r.diffusion_steps,
        block_length=r.block_length,
        sampler=r.sampler,
        sampler_options=dict(r.sampler_options),
    )


def rl_from_recipe(recipe: Recipe, recipe_path: str | None = None, callbacks: list | None = None) -> dict:
    """Run the `rl` section of a recipe end to end; returns (and writes to <output_dir>/results.json) the reward
    and held-out accuracy curves. trainer.resume_from_checkpoint continues from a checkpoint-N of an earlier run."""
    with claim_run_dir(recipe):
        return _rl(recipe, recipe_path, callbacks)


def _rl(recipe: Recipe, recipe_path: str | None, callbacks: list | None) -> dict:
    start = time.time()
    r = recipe.rl
    if not r.init_from:
        raise ValueError("rl.init_from is not set: point it at an SFT checkpoint (e.g. runs/masked_countdown/final)")
    if not Path(r.init_from).is_dir():
        raise FileNotFoundError(f"rl.init_from={r.init_from!r} is not a checkpoint directory (run the SFT recipe first)")
    if not recipe.data.task:
        raise ValueError("an RL recipe needs data.task (countdown, sudoku, arithmetic): prompts and verifiers")
    out = Path(recipe.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resume = resume_checkpoint(recipe, out)  # before the policy and data: a bad resume fails at once
    set_seed(recipe.run.seed)

    # 1. policy, tokenizer, task data and rewards
    model = AutoModel.from_pretrained(r.init_from)
    tokenizer = AutoTokenizer.from_pretrained(r.init_from)
    task = get_task(recipe.data.task, **recipe.data.task_kwargs)
    train = task.to_dataset(recipe.data.num_train_examples, "train", recipe.run.seed, excluded_train_keys(recipe.data))
    if getattr(tokenizer, "chat_template", None):
        # SFT wrapped prompts in the chat template; TRL does the same for conversational prompts
        train = train.map(lambda ex: {"prompt": [{"role": "user", "content": ex["prompt"]}]})
    elif tokenizer(train[0]["prompt"])["input_ids"] != tokenizer(train[0]["prompt"], add_special_tokens=False)["input_ids"]:
        raise ValueError(
            "the tokenizer adds special tokens to raw prompts, which TRL keeps but SFT (add_special_tokens=False) "
            "did not see; give it a chat template or a tokenizer without automatic special tokens"
        )
    names = list(r.reward_funcs) or [TASK_REWARDS.get(recipe.data.task, recipe.data.task)]
    rewards = [get_reward(name) for name in names]
    test_problems = task.generate(recipe.eval.task_problems, "test", recipe.eval.seed) if recipe.eval.task_problems else []
    s = recipe.sample

    def evaluate() -> dict:
        if not test_problems:
            return {}
        return task_accuracy(model, tokenizer, task, test_problems, gen_length=s.gen_length, steps=s.steps,
                             block_length=s.block_length)

    # 2. TRL
    accuracy = AccuracyCallback(evaluate, r.eval_steps)
    trainer = CoupledGRPOTrainer(model, rewards, args=grpo_config(recipe), train_dataset=train,
                                 processing_class=tokenizer, callbacks=[accuracy, *(callbacks or [])])
    n_params = sum(p.numel() for p in model.parameters())
    before = {"step": 0, **evaluate()}
    _report(before)
    train_start = time.time()
    train_output = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.time() - train_start
    after = {"step": trainer.state.global_step, **evaluate()}
    _report(after)

    # 3. final checkpoint (atomic) and results
    final_dir = out / "final"
    save_atomically(final_dir, trainer)
    results = {
        "recipe": recipe_path,
        "config": asdict(recipe),
        "init_from": r.init_from,
        "model_parameters": n_params,
        "reward_funcs": names,
        "accuracy_curve": [before, *accuracy.history, after],
        "accuracy_before": before.get("accuracy"),
        "accuracy_after": after.get("accuracy"),
        "reward_curve": [{"step": h["step"], "reward": h["reward"]} for h in trainer.state.log_history if "reward" in h],
        "train_loss": train_output.metrics.get("train_loss"),
        "train_runtime_s": train_seconds,
        "log_history": trainer.state.log_history,
        "checkpoint": str(final_dir),
        "wall_time_s": time.time() - start,
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str))
    return results
