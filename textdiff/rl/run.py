"""RL from a recipe: SFT checkpoint -> task prompts -> CoupledGRPOTrainer -> held-out accuracy curve -> results.json,
on the one run skeleton (`textdiff.train.run.run`).

The chain: `textdiff train recipes/masked/countdown_sft.yaml` writes runs/masked_countdown/final; then
`textdiff rl recipes/rl/countdown_coupled_grpo.yaml` (rl.init_from = that directory) trains the policy with rewards
and reports greedy held-out test accuracy before, during (rl.eval_steps) and after RL.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback

from textdiff.config import Recipe
from textdiff.data.tasks import excluded_train_keys, get_task
from textdiff.evaluation import evaluate_task
from textdiff.modeling.checkpoint_io import load_model, load_tokenizer
from textdiff.rl.options import DiffusionRLOptions
from textdiff.rl.rewards import TASK_REWARDS, get_reward
from textdiff.rl.trainer import CoupledGRPOConfig, CoupledGRPOTrainer
from textdiff.train.run import Job, common_training_arguments, run

TRL_FIELDS = ("num_generations", "temperature", "beta", "epsilon", "num_iterations", "loss_type", "scale_rewards",
              "sync_ref_model", "ref_model_sync_steps", "reward_weights")
"""fields of the recipe's `rl` section that TRL's GRPOConfig takes under the same name."""


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
        max_completion_length=r.gen_length,
        mask_seed=recipe.run.seed,
        **{name: getattr(r, name) for name in TRL_FIELDS},
        **{f.name: getattr(r, f.name) for f in fields(DiffusionRLOptions)},
    )


def rl_from_recipe(recipe: Recipe, recipe_path: str | None = None, callbacks: list | None = None) -> dict:
    """Run the `rl` section of a recipe end to end; returns (and writes to <output_dir>/results.json) the reward
    and held-out accuracy curves. trainer.resume_from_checkpoint continues from a checkpoint-N of an earlier run."""
    r = recipe.rl
    if not r.init_from:
        raise ValueError("rl.init_from is not set: point it at an SFT checkpoint (e.g. runs/masked_countdown/final)")
    if not Path(r.init_from).is_dir():
        raise FileNotFoundError(f"rl.init_from={r.init_from!r} is not a checkpoint directory (run the SFT recipe first)")
    if not recipe.data.task:
        raise ValueError("an RL recipe needs data.task (countdown, sudoku, arithmetic): prompts and verifiers")

    def setup(out: Path) -> Job:
        # 1. policy, tokenizer, task data and rewards
        model = load_model(r.init_from, what="rl.init_from")
        tokenizer = load_tokenizer(r.init_from, what="rl.init_from")
        task = get_task(recipe.data.task, **recipe.data.task_kwargs)
        train = task.to_dataset(recipe.data.num_train_examples, "train", recipe.run.seed,
                                excluded_train_keys(recipe.data))
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

        def accuracy_now() -> dict:
            if not test_problems:
                return {}
            return evaluate_task(model, tokenizer, task, test_problems, gen_length=s.gen_length, steps=s.steps,
                                 block_length=s.block_length)

        # 2. TRL
        accuracy = AccuracyCallback(accuracy_now, r.eval_steps)
        trainer = CoupledGRPOTrainer(model, rewards, args=grpo_config(recipe), train_dataset=train,
                                     processing_class=tokenizer, callbacks=[accuracy, *(callbacks or [])])
        before = {"step": 0, **accuracy_now()}
        _report(before)

        def after_training() -> dict:
            after = {"step": trainer.state.global_step, **accuracy_now()}
            _report(after)
            return {
                "accuracy_curve": [before, *accuracy.history, after],
                "accuracy_before": before.get("accuracy"),
                "accuracy_after": after.get("accuracy"),
                "reward_curve": [{"step": h["step"], "reward": h["reward"]}
                                 for h in trainer.state.log_history if "reward" in h],
            }

        results = {"init_from": r.init_from, "model_parameters": sum(p.numel() for p in model.parameters()),
                   "reward_funcs": names}
        return Job(trainer=trainer, results=results, evaluate=after_training)

    return run(recipe, recipe_path, setup)
