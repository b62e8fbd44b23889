"""Checkpoints that never lie: atomic publication, completeness checks and resume validation.

One save protocol for a trainer's `checkpoint-N` and a run's `final`, in text, image and RL runs alike:
  1. write the directory under `<parent>/.staging/<name>`, where nothing is ever loaded from;
  2. seal it: fsync every file, then write `textdiff_manifest.json` (every file and its size) last. A directory is
     complete iff its manifest is readable and every listed file has its recorded size;
  3. publish it: a new name is one `rename`; an existing name is swapped with the new directory in one
     `renameat2(RENAME_EXCHANGE)`. So `<parent>/<name>` is, at every instant, absent (before a first save), the old
     complete directory or the new one. Where the exchange is unavailable (not Linux, or a filesystem without it)
     the old directory is first renamed to `.staging/.old-<name>`; `recover_staging` puts back the newest complete
     copy if a kill lands between the two renames;
  4. a replaced or rotated-out directory is renamed into `.staging` before it is deleted, so a visible checkpoint
     is never half deleted.
A run holds `<output_dir>/.lock` (`textdiff.train.rundir.claim_output_dir`) and starts with `recover_staging`, which
finishes or undoes a killed publication and deletes the rest of `.staging` (a killed run's half-written checkpoints
and trash).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import logging
import os
import re
import secrets
import shutil
import sys
from pathlib import Path

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

STAGING_DIR = ".staging"
MANIFEST_NAME = "textdiff_manifest.json"
EXTRA_STATE_NAME = "textdiff_trainer_state.pt"
FINAL_DIR = "final"
RESULTS_NAME = "results.json"
CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
WEIGHT_FILES = {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin"}


class IncompleteCheckpointError(ValueError):
    """A checkpoint lacks files that loading or an exact resume needs."""


class RunFinishedError(ValueError):
    """The checkpoint to resume already reached max_steps: nothing is left to train."""


# ---------------------------------------------------------------------------------------------- completeness


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # POSIX lets a read-only descriptor fsync, files and directories alike
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal(directory: str | Path) -> None:
    """Step 2: make every file of `directory` durable, then write its manifest, last."""
    directory = Path(directory)
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = Path(root, name)
            if path == directory / MANIFEST_NAME:
                continue
            _fsync(path)
            files[path.relative_to(directory).as_posix()] = path.stat().st_size
        _fsync(root)
    with open(directory / MANIFEST_NAME, "w") as f:
        json.dump({"format": 1, "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    _fsync(directory)


def _manifest_problems(directory: Path) -> list[str] | None:
    """None without a manifest; otherwise what the directory lacks of it (empty when complete)."""
    try:
        files = json.loads((directory / MANIFEST_NAME).read_text())["files"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):  # a manifest cut short by a kill: never complete
        return [f"a readable {MANIFEST_NAME}"]
    sizes = {name: (directory / name).stat().st_size if (directory / name).is_file() else None for name in files}
    return [name if sizes[name] is None else f"{name} ({sizes[name]} of {size} bytes)"
            for name, size in files.items() if sizes[name] != size]


def missing_files(directory: str | Path, *, resumable: bool) -> list[str]:
    """What `directory` lacks to be loaded as a model (config and weights) or, with `resumable`, to resume a
    Trainer exactly (also its state, optimizer, scheduler and RNG), plus every file its manifest lists but that is
    gone or has another size. A directory without a manifest (an older textdiff, `save_pretrained`) is judged by
    the required files alone. Empty when complete."""
    d = Path(directory)
    if not d.is_dir():
        return [f"the directory {d}"]
    problems = _manifest_problems(d) or []
    present = set(os.listdir(d))
    deepspeed = "latest" in present  # DeepSpeed keeps weights, optimizer and scheduler in global_step*/
    required = ["adapter_config.json" if "adapter_config.json" in present else "config.json"]  # PEFT: adapter only
    if not deepspeed and not present & WEIGHT_FILES:
        required.append("model.safetensors")
    if resumable:
        required.append("trainer_state.json")
        if not deepspeed:
            required += ["optimizer.pt", "scheduler.pt"]
        if not any(re.fullmatch(r"rng_state(_\d+)?\.pth", name) for name in present):
            required.append("rng_state.pth")
    return [name for name in required if name not in present and name not in problems] + problems


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint-N directory in `run_dir`, oldest step first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), run_dir / m.group(0)) for m in map(CHECKPOINT_NAME.match, os.listdir(run_dir)) if m]
    return sorted((step, path) for step, path in found if path.is_dir())


def latest_complete_checkpoint(run_dir: str | Path) -> str | None:
    """The checkpoint-N with the highest N that is complete enough to resume from; incomplete ones (a rotation or
    an older textdiff killed mid-way) are skipped with a warning. None when there is none."""
    for _, path in reversed(list_checkpoints(run_dir)):
        missing = missing_files(path, resumable=True)
        if not missing:
            return str(path)
        logger.warning("skipping the incomplete checkpoint %s (missing %s)", path, ", ".join(missing))
    return None


def check_resumable(checkpoint: str | Path, max_steps: int | None = None) -> str:
    """`checkpoint` if a Trainer can resume from it exactly; a clear error if it is not there, is incomplete (a
    fresh optimizer, scheduler or RNG would silently change the run) or already reached `max_steps`."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint={str(checkpoint)!r} is not a checkpoint directory")
    missing = missing_files(path, resumable=True)
    if missing:
        raise IncompleteCheckpointError(
            f"cannot resume from the incomplete checkpoint {path}: it lacks {', '.join(missing)}; resume from an "
            "earlier checkpoint (resume_from_checkpoint=latest skips incomplete ones)"
        )
    try:
        step = int(json.loads((path / "trainer_state.json").read_text())["global_step"])
    except (ValueError, KeyError, TypeError) as err:  # no manifest (an older textdiff) to vouch for the file
        raise IncompleteCheckpointError(f"cannot resume from {path}: unreadable trainer_state.json ({err})") from None
    if max_steps is not None and max_steps > 0 and step >= max_steps:
        final = path.parent / FINAL_DIR
        model = final if not missing_files(final, resumable=False) else path
        raise RunFinishedError(
            f"nothing to resume: {path} is step {step} of max_steps={max_steps}, the run is finished and {model} "
            "holds its model; raise trainer.max_steps to train further"
        )
    return str(path)


def resolve_resume(spec: str | bool | None, run_dir: str | Path, max_steps: int | None = None) -> str | None:
    """A resume setting ("latest" or True: the newest complete checkpoint-N in `run_dir`; a path; None) as a
    checked checkpoint path, or None for a fresh run."""
    if spec is None or spec is False:
        return None
    if spec is True or spec == "latest":
        latest = latest_complete_checkpoint(run_dir)
        if latest is None:
            raise FileNotFoundError(f"resume_from_checkpoint=latest but {run_dir} holds no complete checkpoint-N")
        spec = latest
    return check_resumable(spec, max_steps)


# ---------------------------------------------------------------------------------------------- publication


def prepare_staging(target: Path) -> Path:
    """Step 1: where the next version of `target` is written, emptied of a killed save's leftover."""
    staged = target.parent / STAGING_DIR / target.name
    if staged.exists():
        _remove_tree(staged)
    staged.parent.mkdir(parents=True, exist_ok=True)
    return staged


@functools.lru_cache(maxsize=1)
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28, musl >= 1.2.3
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def _exchange(a: Path, b: Path) -> None:
    """Swap two existing paths atomically; OSError with an errno in _NO_EXCHANGE where that is unavailable."""
    renameat2 = _renameat2()
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2(RENAME_EXCHANGE) is not available here")
    sys.audit("textdiff.exchange", str(a), str(b))  # visible to audit hooks like os.rename (ctypes calls are not)
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a), None, str(b))


def publish(staged: str | Path, target: str | Path) -> None:
    """Step 3: make the sealed directory `staged` visible as `target` (same filesystem), replacing any old one."""
    staged, target = Path(staged), Path(target)
    if not target.exists():
        os.rename(staged, target)
        _fsync(target.parent)
        return
    try:
        _exchange(staged, target)
    except OSError as err:
        if err.errno not in _NO_EXCHANGE:
            raise
        old = staged.parent / f".old-{target.name}"
        if old.exists():
            _remove_tree(old)
        os.rename(target, old)  # `target` is absent until the next rename; recover_staging covers that gap
        _fsync(target.parent)
        os.rename(staged, target)
        _fsync(target.parent)
        _remove_tree(old)
        return
    _fsync(target.parent)
    _remove_tree(staged)  # the old directory, out of sight since the exchange


def _remove_tree(path: Path) -> None:
    # the manifest goes first: whatever a kill leaves of this tree is never mistaken for a complete directory
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path / MANIFEST_NAME)
    shutil.rmtree(path)


def discard(path: str | Path) -> None:
    """Step 4: delete a visible directory (or file) by first renaming it into `.staging`, so its name never holds
    a half-deleted checkpoint."""
    path = Path(path)
    staging = path.parent / STAGING_DIR
    staging.mkdir(exist_ok=True)
    trash = staging / f".trash-{path.name}-{secrets.token_hex(4)}"
    os.rename(path, trash)
    if trash.is_dir():
        _remove_tree(trash)
    else:
        os.unlink(trash)


def tidy_staging(parent: str | Path) -> None:
    """Remove `<parent>/.staging` once it is empty (a run that saved cleanly leaves no trace of it)."""
    with contextlib.suppress(OSError):
        os.rmdir(Path(parent) / STAGING_DIR)


def recover_staging(parent: str | Path) -> None:
    """Finish or undo a publication that a kill interrupted, then delete the rest of `<parent>/.staging`: a sealed
    new directory replaces a missing or incomplete one of its name, else a sealed `.old-` copy is put back. Call it
    only while no save into `parent` is running (under the run lock, or before training)."""
    parent = Path(parent)
    staging = parent / STAGING_DIR
    if not staging.is_dir():
        return

    def complete(path: Path) -> bool:
        return path.is_dir() and not missing_files(path, resumable=bool(CHECKPOINT_NAME.match(path.name)))

    entries = sorted(staging.iterdir())
    staged = [e for e in entries if not e.name.startswith(".")]
    olds = [e for e in entries if e.name.startswith(".old-")]
    for entry in staged + olds:  # new before old: the newest complete copy wins
        target = parent / entry.name.removeprefix(".old-")
        if entry.is_dir() and _manifest_problems(entry) == [] and not complete(target):
            if target.exists():
                discard(target)
            os.rename(entry, target)
            _fsync(parent)
            logger.warning("recovered %s from an interrupted save", target)
    shutil.rmtree(staging)


def rotate_checkpoints(run_dir: str | Path, limit: int | None, protect: tuple = ()) -> None:
    """Delete the oldest checkpoint-N (by step) beyond `limit`, never one in `protect`, each out of sight first."""
    if limit is None or limit <= 0:
        return
    checkpoints = list_checkpoints(run_dir)
    protected = {Path(p).resolve() for p in protect if p}
    excess = len(checkpoints) - max(limit, len(protected))
    for _, path in checkpoints:
        if excess <= 0:
            break
        if path.resolve() not in protected:
            discard(path)
            excess -= 1


def save_model_atomically(trainer, target: str | Path) -> None:
    """A trainer's model and tokenizer (`Trainer.save_model`, which gathers ZeRO-3 shards) saved to `target` by
    the protocol: a kill at any moment leaves the old complete `target`, the new one, or none if there was none."""
    target = Path(target)
    staged = prepare_staging(target) if trainer.args.should_save else target.parent / STAGING_DIR / target.name
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staged))
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        seal(staged)
        publish(staged, target)
        tidy_staging(target.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a small file (results.json) so that a kill leaves the old version or the new one, never half."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


# ---------------------------------------------------------------------------------------------- the trainer side


class AtomicCheckpoints:
    """Mixin for `transformers.Trainer` subclasses (DiffusionTrainer, CoupledGRPOTrainer): every checkpoint-N goes
    through the save protocol and rotation never leaves a half-deleted one; `train(resume_from_checkpoint=...)`
    recovers an interrupted save, resolves True to the newest complete checkpoint and refuses a missing,
    incomplete or finished one. Overrides Trainer's `_get_output_dir` and `_save_checkpoint` (private hooks of
    transformers 5, tested to exist) and `train`. A subclass adds its own state to checkpoints with
    `extra_checkpoint_state` / `load_extra_checkpoint_state`."""

    _staging = False

    def extra_checkpoint_state(self) -> dict | None:
        """State beyond Trainer's that an exact resume needs (saved with torch.save, loaded weights_only)."""
        return None

    def load_extra_checkpoint_state(self, state: dict) -> None:
        """Restore what `extra_checkpoint_state` saved."""

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if self._staging else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(super()._get_output_dir(trial))
        target = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged = prepare_staging(target) if self.args.should_save else run_dir / STAGING_DIR / target.name
        self.accelerator.wait_for_everyone()
        self._staging = True  # Trainer writes model, optimizer, scheduler, RNG and state into .staging/checkpoint-N
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        extra = self.extra_checkpoint_state()
        if extra is not None and self.args.should_save:
            torch.save(extra, staged / EXTRA_STATE_NAME)
        self.accelerator.wait_for_everyone()  # every process's files are in before the main one seals them
        if self.args.should_save:
            seal(staged)
            publish(staged, target)
            best = self.state.best_model_checkpoint
            if best and Path(best).parent == staged.parent:  # Trainer recorded it under .staging
                self.state.best_model_checkpoint = str(run_dir / Path(best).name)
            rotate_checkpoints(run_dir, self.args.save_total_limit, protect=(target, self.state.best_model_checkpoint))
            tidy_staging(run_dir)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if self.args.should_save:
            recover_staging(self.args.output_dir)
        self.accelerator.wait_for_everyone()
        resume = resolve_resume(resume_from_checkpoint, self.args.output_dir, self.args.max_steps)
        if resume is not None and os.path.isfile(os.path.join(resume, EXTRA_STATE_NAME)):
            self.load_extra_checkpoint_state(torch.load(os.path.join(resume, EXTRA_STATE_NAME), weights_only=True))
        return super().train(resume, *args, **kwargs)
