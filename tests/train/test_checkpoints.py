"""Checkpoints that never lie (`textdiff.train.checkpoints`).

The kill tests fork the trained test process and SIGKILL the child just before its k-th file operation of a save
(every mkdir, rename, exchange, unlink, rmdir, file opened for writing, torch.save and safetensors write), for
k = 1, 2, ... until the save completes; the parent then checks what a next run would find on disk.
"""

import hashlib
import json
import logging
import os
import random
import shutil
import signal
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, Trainer

from tests.conftest import tiny_config
from tests.train.test_trainer import StopAt, losses, make_trainer
from textdiff import TextDiffModel
from textdiff.objectives import MaskedDiffusionObjective
from textdiff.train import checkpoints
from textdiff.train.checkpoints import (
    MANIFEST_NAME,
    IncompleteCheckpointError,
    RunFinishedError,
    check_resumable,
    latest_complete_checkpoint,
    missing_files,
    recover_staging,
)
from textdiff.train.run import save_atomically
from textdiff.train.rundir import OutputDirInUseError, OutputDirNotEmptyError, output_dir_lock

OBJECTIVE = MaskedDiffusionObjective(mask_token_id=66, antithetic=True)
MAX_STEPS = 8
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_MUTATING_EVENTS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "textdiff.exchange", "test.write"}


def _mutates(event: str, args: tuple) -> bool:
    if event == "open":  # builtins.open and os.open: (path, mode, flags)
        return args[2] is not None and bool(args[2] & _WRITE_FLAGS)
    return event in _MUTATING_EVENTS


def _audited_writes() -> None:
    """torch.save and safetensors write from C++ / Rust without an audit event: announce them (child only)."""
    import safetensors.torch
    import transformers.modeling_utils

    def audited(save, path_arg):
        def wrapper(*args, **kwargs):
            sys.audit("test.write", str(args[path_arg]))
            return save(*args, **kwargs)

        return wrapper

    torch.save = audited(torch.save, 1)
    transformers.modeling_utils.safe_save_file = audited(transformers.modeling_utils.safe_save_file, 1)
    safetensors.torch.save_file = audited(safetensors.torch.save_file, 1)


def run_killed_at(k: int, save, *, exchange: bool = True) -> tuple[bool, list[str]]:
    """Run `save()` in a forked child that is SIGKILLed just before its k-th file operation. Returns (killed,
    the operations it ran to completion when not killed)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 3
        try:
            os.close(read_end)
            if not exchange:  # a system without renameat2(RENAME_EXCHANGE): the two-rename fallback
                checkpoints._renameat2 = lambda: None
            _audited_writes()
            ops, armed = [], [True]

            def hook(event, args):
                if armed[0] and _mutates(event, args):
                    ops.append(f"{event} {args[0]}")
                    if len(ops) == k:
                        os.kill(os.getpid(), signal.SIGKILL)

            sys.addaudithook(hook)
            save()
            armed[0] = False
            os.write(write_end, json.dumps(ops).encode())
            code = 0
        except Exception:  # noqa: BLE001 - report any failure: the child must never return into pytest
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 1 << 16):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True, []
    assert os.WEXITSTATUS(status) == 0, "the save failed in the child (traceback above)"
    return False, json.loads(b"".join(chunks))


def kill_points(ops: list[str], every: bool) -> list[int]:
    """1-based kill points: all of them, or (the fast default) every publication step (manifest, rename, exchange)
    and the first and last of each run of the bulk operations between them (files written into the staging
    directory, files of a tree being deleted), whose kill points in between leave the same kind of state."""
    def bulk(op):
        return not op.startswith(("os.rename", "textdiff.exchange")) and not op.endswith(MANIFEST_NAME)

    n = len(ops)
    keep = [k for k in range(1, n + 1) if every or not bulk(ops[k - 1]) or k in (1, n)
            or not bulk(ops[k - 2]) or not bulk(ops[k])]
    return keep + [n + 1]  # n + 1: the save completes


def sweep(save, run_dir: Path, check, *, every: bool, exchange: bool = True) -> list[str]:
    """Kill `save()` before each of its file operations in turn (`kill_points`), from a fresh copy of `run_dir`
    each time, and call check(k, ops) on what is left; returns the operations of the uninterrupted save."""
    pristine = run_dir.with_name(run_dir.name + "-pristine")
    shutil.copytree(run_dir, pristine, symlinks=True)
    killed, ops = run_killed_at(10**9, save, exchange=exchange)
    assert not killed and ops
    for k in kill_points(ops, every):
        shutil.rmtree(run_dir)
        shutil.copytree(pristine, run_dir, symlinks=True)
        killed, _ = run_killed_at(k, save, exchange=exchange)
        assert killed == (k <= len(ops)), (k, ops)
        check(k, ops)
    return ops


def weights_hash(directory: Path) -> str:
    return hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()


def visible_checkpoints(run_dir: Path) -> dict[str, bool]:
    """Every checkpoint-N (and final) in sight: is it complete?"""
    return {p.name: not missing_files(p, resumable=p.name != "final") for p in run_dir.iterdir()
            if p.name.startswith("checkpoint-") or p.name == "final"}


EVERY = pytest.mark.parametrize("every", [False, pytest.param(True, marks=pytest.mark.slow)],
                                ids=["publication-kill-points", "every-kill-point"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run stopped at step 6 of 8 (checkpoints 2, 4, 6, none rotated) and the uninterrupted 8-step run."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    full = make_trainer(TextDiffModel(tiny_config()).train(), root / "full", OBJECTIVE, max_steps=MAX_STEPS)
    full.train()
    torch.manual_seed(0)
    cut = make_trainer(TextDiffModel(tiny_config()).train(), root / "cut", OBJECTIVE, max_steps=MAX_STEPS,
                       save_steps=2, callbacks=[StopAt(6)])
    cut.args.save_total_limit = None
    cut.train()
    assert sorted(os.listdir(root / "cut")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    return {"root": root, "trainer": cut, "losses": losses(full.state.log_history),
            "weights": {k: v.clone() for k, v in full.model.state_dict().items()}}


def _fresh_run_dir(trained, name: str, keep: tuple[str, ...]) -> Path:
    run_dir = trained["root"] / name
    for checkpoint in keep:
        shutil.copytree(trained["root"] / "cut" / checkpoint, run_dir / checkpoint)
    return run_dir


@EVERY
def test_kill_at_every_operation_of_a_checkpoint_save_and_its_rotation(trained, every):
    """Saving checkpoint-6 next to 2 and 4 with save_total_limit=2 (rotation deletes checkpoint-2): whatever the
    kill point, every checkpoint in sight is complete, `latest` is checkpoint-4 before the publication and
    checkpoint-6 after it, and the next run's recovery leaves no `.staging` and saves cleanly."""
    trainer = trained["trainer"]
    run_dir = _fresh_run_dir(trained, f"rotation-{every}", ("checkpoint-2", "checkpoint-4"))
    trainer.args.output_dir, trainer.args.save_total_limit = str(run_dir), 2
    old4 = weights_hash(run_dir / "checkpoint-4")
    new6 = weights_hash(trained["root"] / "cut" / "checkpoint-6")
    survivors = []

    def check(k, ops):
        seen = visible_checkpoints(run_dir)
        assert all(seen.values()), (k, ops[k - 1] if k <= len(ops) else "done", seen)
        latest = Path(latest_complete_checkpoint(run_dir))
        assert weights_hash(latest) == {"checkpoint-4": old4, "checkpoint-6": new6}[latest.name]
        survivors.append(latest.name)
        recover_staging(run_dir)  # what the next run does first
        assert not (run_dir / ".staging").exists()
        assert Path(latest_complete_checkpoint(run_dir)).name in ("checkpoint-4", "checkpoint-6")

    ops = sweep(lambda: trainer._save_checkpoint(trainer.model, None), run_dir, check, every=every)
    assert any(op.startswith("test.write") and op.endswith("optimizer.pt") for op in ops)
    assert any(op.startswith("os.rename") for op in ops)  # publication and the rotation's move out of sight
    # once published, checkpoint-6 stays the latest, through the rotation
    first_new = survivors.index("checkpoint-6")
    assert 0 < first_new and set(survivors[first_new:]) == {"checkpoint-6"}
    assert sorted(os.listdir(run_dir)) == ["checkpoint-4", "checkpoint-6"]
    trainer._save_checkpoint(trainer.model, None)  # a save after the last recovery runs cleanly
    assert sorted(os.listdir(run_dir)) == ["checkpoint-4", "checkpoint-6"]


@pytest.mark.parametrize("exchange", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["renameat2-exchange", "two-renames"])
@EVERY
def test_kill_at_every_operation_of_re_saving_an_existing_checkpoint(trained, exchange, every):
    """Re-saving checkpoint-6 (a resume from checkpoint-4 reaches step 6 again) over an old, different one. With
    the atomic exchange the name always holds a complete checkpoint; without it (the two-rename fallback) it may be
    absent for an instant, and the next run's recovery puts the newest complete copy back."""
    trainer = trained["trainer"]
    run_dir = _fresh_run_dir(trained, f"resave-{exchange}-{every}", ("checkpoint-4",))
    trainer.args.output_dir, trainer.args.save_total_limit = str(run_dir), 2
    saved = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with torch.no_grad():
        trainer.model.lm_head.weight.add_(1.0)
    trainer._save_checkpoint(trainer.model, None)  # the old checkpoint-6: other weights
    trainer.model.load_state_dict(saved)
    old6 = weights_hash(run_dir / "checkpoint-6")
    new6 = weights_hash(trained["root"] / "cut" / "checkpoint-6")
    assert old6 != new6
    survivors = []

    def check(k, ops):
        seen = visible_checkpoints(run_dir)
        assert all(seen.values()), (k, seen)
        if exchange:
            assert "checkpoint-6" in seen, k
        recover_staging(run_dir)
        latest = Path(latest_complete_checkpoint(run_dir))
        assert latest.name == "checkpoint-6", k
        survivors.append(weights_hash(latest))
        if survivors[-1] not in survivors[:-1]:  # loadable (once per version: loading is the slow part)
            assert AutoModel.from_pretrained(latest).config.vocab_size == 67

    sweep(lambda: trainer._save_checkpoint(trainer.model, None), run_dir, check, every=every, exchange=exchange)
    first_new = survivors.index(new6)
    assert set(survivors[:first_new]) == {old6} and set(survivors[first_new:]) == {new6}


@pytest.mark.parametrize("existing", [True, False], ids=["replace-final", "first-final"])
@EVERY
def test_kill_at_every_operation_of_the_final_save(trained, existing, every):
    """`save_atomically` (the final model of text, image and RL runs): `final` is always absent (first save, before
    its publication) or a complete model that `from_pretrained` loads, the old one or the new one."""
    trainer = trained["trainer"]
    run_dir = trained["root"] / f"final-{existing}-{every}"
    run_dir.mkdir()
    trainer.args.output_dir = str(run_dir)
    saved = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    if existing:
        with torch.no_grad():
            trainer.model.lm_head.weight.add_(1.0)
        save_atomically(run_dir / "final", trainer)
        trainer.model.load_state_dict(saved)
    old = weights_hash(run_dir / "final") if existing else None
    survivors = []

    def check(k, ops):
        final = run_dir / "final"
        if final.exists() or existing:
            assert not missing_files(final, resumable=False), k
            survivors.append(weights_hash(final))
            if survivors[-1] != old and survivors[-1] not in survivors[:-1]:  # the new model, as trained
                loaded = AutoModel.from_pretrained(final).state_dict()
                assert all(torch.equal(loaded[name], saved[name]) for name in loaded), k
        else:
            survivors.append(None)
        recover_staging(run_dir)
        assert not (run_dir / ".staging").exists()

    sweep(lambda: save_atomically(run_dir / "final", trainer), run_dir, check, every=every)
    new = survivors[-1]
    assert new not in (None, old)
    first_new = survivors.index(new)
    assert set(survivors[:first_new]) == {old} and set(survivors[first_new:]) == {new}


@pytest.mark.parametrize("survivor", ["checkpoint-4", "checkpoint-6"])
def test_resume_from_the_survivor_of_a_kill_equals_the_uninterrupted_run(trained, survivor):
    """Killed before publishing checkpoint-6 (survivor: checkpoint-4) or during the rotation after it (survivor:
    checkpoint-6): `resume_from_checkpoint=True` (latest) continues to step 8 with the uninterrupted run's losses
    and weights, bit for bit."""
    trainer = trained["trainer"]
    run_dir = _fresh_run_dir(trained, f"survivor-{survivor}", ("checkpoint-2", "checkpoint-4"))
    trainer.args.output_dir, trainer.args.save_total_limit = str(run_dir), 2
    # the global RNG as at step 6 (other tests drew from it since): the checkpoint saves it for the resume
    rng = torch.load(trained["root"] / "cut" / "checkpoint-6" / "rng_state.pth", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["cpu"])
    save = lambda: trainer._save_checkpoint(trainer.model, None)
    _, ops = run_killed_at(10**9, save)
    shutil.rmtree(run_dir)
    run_dir = _fresh_run_dir(trained, f"survivor-{survivor}", ("checkpoint-2", "checkpoint-4"))
    published = next(i for i, op in enumerate(ops) if op.startswith("os.rename") and op.endswith("checkpoint-6"))
    k = published + 1 if survivor == "checkpoint-4" else len(ops)  # just before publishing / deleting the last file
    assert run_killed_at(k, save)[0]
    assert Path(latest_complete_checkpoint(run_dir)).name == survivor

    torch.manual_seed(12345)  # a different global RNG state: resume must restore the saved one
    resumed = make_trainer(TextDiffModel(tiny_config()).train(), run_dir, OBJECTIVE, max_steps=MAX_STEPS,
                           save_steps=2)
    resumed.train(resume_from_checkpoint=True)
    start = int(survivor.split("-")[1])
    got = losses(resumed.state.log_history)
    assert {s: got[s] for s in range(start + 1, MAX_STEPS + 1)} == {
        s: trained["losses"][s] for s in range(start + 1, MAX_STEPS + 1)}
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, trained["weights"][name]), name


@pytest.mark.parametrize("lost", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "config.json"])
def test_resume_refuses_an_incomplete_checkpoint_and_latest_skips_it(trained, lost, caplog):
    run_dir = _fresh_run_dir(trained, f"lost-{lost}", ("checkpoint-4", "checkpoint-6"))
    (run_dir / "checkpoint-6" / lost).unlink()
    with pytest.raises(IncompleteCheckpointError, match=rf"checkpoint-6: it lacks {lost}"):
        check_resumable(run_dir / "checkpoint-6")
    trainer = make_trainer(TextDiffModel(tiny_config()).train(), run_dir, OBJECTIVE, max_steps=MAX_STEPS)
    with pytest.raises(IncompleteCheckpointError, match=lost):  # a direct Trainer.train checks too
        trainer.train(resume_from_checkpoint=str(run_dir / "checkpoint-6"))
    with caplog.at_level(logging.WARNING, logger="textdiff.train.checkpoints"):
        assert latest_complete_checkpoint(run_dir) == str(run_dir / "checkpoint-4")
    assert "skipping the incomplete checkpoint" in caplog.text and f"checkpoint-6 (missing {lost})" in caplog.text


def test_a_file_cut_short_or_a_torn_manifest_makes_a_checkpoint_incomplete(trained):
    run_dir = _fresh_run_dir(trained, "torn", ("checkpoint-4", "checkpoint-6"))
    weights = run_dir / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert missing_files(run_dir / "checkpoint-6", resumable=False)[0].startswith("model.safetensors (100 of ")
    manifest = run_dir / "checkpoint-4" / MANIFEST_NAME
    manifest.write_text(manifest.read_text()[:20])
    assert missing_files(run_dir / "checkpoint-4", resumable=True) == [f"a readable {MANIFEST_NAME}"]
    assert latest_complete_checkpoint(run_dir) is None


def test_resume_from_a_checkpoint_that_is_not_there_is_an_error(trained, tmp_path):
    trainer = make_trainer(TextDiffModel(tiny_config()).train(), tmp_path, OBJECTIVE, max_steps=MAX_STEPS)
    with pytest.raises(FileNotFoundError, match="is not a checkpoint directory"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-99"))
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint-N"):
        trainer.train(resume_from_checkpoint=True)


def test_a_stale_staging_area_of_a_killed_run_is_cleaned_not_mixed_in(trained):
    """A killed run left a half-written checkpoint-8 and trash in .staging: the next training saves without
    `Directory not empty` and publishes only its own checkpoints."""
    run_dir = _fresh_run_dir(trained, "stale", ("checkpoint-4",))
    half = run_dir / ".staging" / "checkpoint-8"
    shutil.copytree(run_dir / "checkpoint-4", half)
    (half / "optimizer.pt").unlink()
    (run_dir / ".staging" / ".trash-checkpoint-2-0a1b").mkdir()
    resumed = make_trainer(TextDiffModel(tiny_config()).train(), run_dir, OBJECTIVE, max_steps=6, save_steps=2)
    resumed.args.save_total_limit = 3
    resumed.train(resume_from_checkpoint=str(run_dir / "checkpoint-4"))
    assert sorted(os.listdir(run_dir)) == ["checkpoint-4", "checkpoint-6"]


def test_the_trainer_hooks_it_overrides_still_exist():
    for name in ("_get_output_dir", "_save_checkpoint", "train"):
        assert hasattr(Trainer, name), f"transformers.Trainer no longer has {name}"
        assert name in checkpoints.AtomicCheckpoints.__dict__


# ---------------------------------------------------------------------------------------------- runs

TINY_RUN = [
    "model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2", "model.num_key_value_heads=1",
    "model.intermediate_size=64", "tokenizer.vocab_size=300", "data.num_train_examples=64",
    "data.num_valid_examples=8", "trainer.max_steps=2", "trainer.logging_steps=1",
    "trainer.per_device_train_batch_size=4", "trainer.eval_steps=null", "trainer.save_steps=2",
    "trainer.report_to=[]", "eval.elbo_samples=1", "eval.task_problems=0",
]


def _recipe(out: Path, *overrides):
    from textdiff.config import load_recipe

    return load_recipe("recipes/masked/arithmetic_sft.yaml", [*TINY_RUN, f"run.output_dir={out}", *overrides])


def test_a_run_dir_is_locked_refused_when_it_holds_a_run_and_a_finished_run_is_not_resumed(tmp_path, capsys):
    from textdiff.cli import main
    from textdiff.train.run import train_from_recipe

    out = tmp_path / "run"
    train_from_recipe(_recipe(out))
    final_hash, results = weights_hash(out / "final"), (out / "results.json").read_text()
    assert sorted(os.listdir(out)) == [".lock", "checkpoint-2", "final", "results.json", "tokenizer"]

    # 1. a second run into it: refused, naming the ways on
    with pytest.raises(OutputDirNotEmptyError, match=r"already holds a run \(results.json, final, checkpoint-2\)"):
        train_from_recipe(_recipe(out))
    # 2. resuming the finished run: no extra step, final and results untouched
    with pytest.raises(RunFinishedError, match=r"checkpoint-2 is step 2 of max_steps=2, the run is finished and "):
        train_from_recipe(_recipe(out, "trainer.resume_from_checkpoint=latest"))
    assert weights_hash(out / "final") == final_hash and (out / "results.json").read_text() == results
    with pytest.raises(ValueError, match="contradict"):
        train_from_recipe(_recipe(out, "trainer.resume_from_checkpoint=latest", "run.overwrite=true"))

    # 3. a concurrent run: the lock is held by another live process, whose pid the error names
    ready_read, ready_write = os.pipe()
    go_read, go_write = os.pipe()
    holder = os.fork()
    if holder == 0:
        try:
            with output_dir_lock(out):
                os.write(ready_write, b"1")
                os.read(go_read, 1)
        finally:
            os._exit(0)
    try:
        assert os.read(ready_read, 1) == b"1"
        with pytest.raises(OutputDirInUseError, match=rf"in use by another run \(pid {holder}\)"):
            train_from_recipe(_recipe(out, "run.overwrite=true"))
        capsys.readouterr()
        assert main(["train", "recipes/masked/arithmetic_sft.yaml", *TINY_RUN, f"run.output_dir={out}"]) == 2
        err = capsys.readouterr().err
        assert f"in use by another run (pid {holder})" in err and "Traceback" not in err
    finally:
        os.write(go_write, b"1")
        os.waitpid(holder, 0)

    # 4. overwrite: the earlier run's checkpoints, final and results go, its tokenizer cache stays
    (out / "checkpoint-9").mkdir()
    results = train_from_recipe(_recipe(out, "run.overwrite=true", "trainer.save_steps=null", "trainer.max_steps=1"))
    assert sorted(os.listdir(out)) == [".lock", "final", "results.json", "tokenizer"]
    assert [h["step"] for h in results["log_history"] if "loss" in h] == [1]


def test_rl_resumes_from_its_staged_checkpoints(tmp_path):
    """CoupledGRPOTrainer checkpoints go through the same protocol (sealed, no .staging left) and keep the rollout
    sampler's state; resuming continues the global step with the uninterrupted run's rewards and losses."""
    from tests.test_rl_trainer import _dataset, _tokenizer, letter_reward
    from textdiff.config import load_recipe
    from textdiff.rl.run import rl_from_recipe
    from textdiff.rl.trainer import CoupledGRPOConfig, CoupledGRPOTrainer

    tok = _tokenizer()
    torch.manual_seed(0)
    TextDiffModel(tiny_config(vocab_size=len(tok), mask_token_id=1, eos_token_id=0, pad_token_id=0,
                              num_hidden_layers=1)).save_pretrained(tmp_path / "policy")

    def rl_trainer(out, **overrides):
        args = CoupledGRPOConfig(
            output_dir=str(out), per_device_train_batch_size=8, num_generations=4, max_completion_length=6,
            diffusion_steps=6, learning_rate=0.05, max_steps=3, logging_steps=1, report_to="none", use_cpu=True,
            disable_dropout=True, temperature=1.0, seed=0, save_strategy="steps", save_steps=2, **overrides)
        return CoupledGRPOTrainer(str(tmp_path / "policy"), letter_reward, args=args, train_dataset=_dataset(),
                                  processing_class=tok)

    def curve(trainer):
        return {h["step"]: (h["reward"], h["loss"]) for h in trainer.state.log_history if "reward" in h}

    full = rl_trainer(tmp_path / "full")
    full.train()
    cut = rl_trainer(tmp_path / "cut")
    cut.add_callback(StopAt(2))
    cut.train()
    assert sorted(os.listdir(tmp_path / "cut")) == ["README.md", "checkpoint-2"]  # TRL's model card
    assert not missing_files(tmp_path / "cut" / "checkpoint-2", resumable=True)
    assert (tmp_path / "cut" / "checkpoint-2" / MANIFEST_NAME).exists()

    resumed = rl_trainer(tmp_path / "cut")
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-7"))
    recipe = load_recipe("recipes/rl/countdown_d1.yaml", [  # `textdiff rl` checks it before it loads anything
        f"rl.init_from={tmp_path / 'policy'}", f"run.output_dir={tmp_path / 'rl'}",
        f"trainer.resume_from_checkpoint={tmp_path / 'cut' / 'checkpoint-7'}"])
    with pytest.raises(FileNotFoundError, match="checkpoint-7' is not a checkpoint directory"):
        rl_from_recipe(recipe)
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-2"))
    assert resumed.state.global_step == 3
    assert [h["step"] for h in resumed.state.log_history[-2:]] == [3, 3]  # step 3 and the run summary
    assert curve(resumed) == curve(full)
