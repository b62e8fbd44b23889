"""The run directory: one run at a time holds it (an advisory lock naming its pid), an interrupted save is
recovered before anything else, and an earlier run is never silently overwritten (resume it, or start over with
run.overwrite=true)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from textdiff.train.checkpoints import (
    FINAL_DIR,
    RESULTS_NAME,
    discard,
    list_checkpoints,
    recover_staging,
    tidy_staging,
)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not protected from each other there
    fcntl = None

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class OutputDirInUseError(FileExistsError):
    """Another live run holds the output directory's lock."""


class OutputDirNotEmptyError(FileExistsError):
    """The output directory holds an earlier run that this one neither resumes nor overwrites."""


@contextlib.contextmanager
def output_dir_lock(output_dir: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `<output_dir>/.lock` (released when the process ends, however it ends); a second
    holder fails at once, naming the pid that holds it."""
    if fcntl is None:
        logger.warning("no fcntl on this platform: %s is not locked against a concurrent run", output_dir)
        yield
        return
    fd = os.open(Path(output_dir) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            time.sleep(0.05)  # the holder writes its pid just after it takes the lock
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise OutputDirInUseError(
                f"run.output_dir={output_dir} is in use by another run (pid {holder or 'unknown'}); wait for it to "
                "finish or choose another run.output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def previous_run(output_dir: str | Path) -> list[Path]:
    """What an earlier run left in `output_dir`: its checkpoints, final model and results."""
    out = Path(output_dir)
    # results first: deleting them first means an interrupted overwrite never leaves a run that looks finished
    return [p for p in (out / RESULTS_NAME, out / FINAL_DIR) if p.exists()] + [p for _, p in list_checkpoints(out)]


@contextlib.contextmanager
def claim_output_dir(output_dir: str | Path, *, resuming: bool, overwrite: bool) -> Iterator[Path]:
    """For the duration of a run: hold the output directory's lock (a concurrent run into it fails at once),
    recover an interrupted save, and refuse to start over an earlier run unless resuming it or `overwrite`
    (which deletes that run's checkpoints, final model and results first; caches such as the tokenizer stay)."""
    out = Path(output_dir)
    if resuming and overwrite:
        raise ValueError("trainer.resume_from_checkpoint and run.overwrite=true contradict each other: resume the "
                         "run or start it over")
    out.mkdir(parents=True, exist_ok=True)
    if os.environ.get("RANK", "0") != "0":  # in a multi-process launch the main process guards the directory
        yield out
        return
    with output_dir_lock(out):
        recover_staging(out)
        previous = previous_run(out)
        if previous and not resuming:
            if not overwrite:
                names = ", ".join(p.name for p in previous[:4]) + (", ..." if len(previous) > 4 else "")
                raise OutputDirNotEmptyError(
                    f"run.output_dir={out} already holds a run ({names}): resume it with "
                    "trainer.resume_from_checkpoint=latest, start over with run.overwrite=true, or choose another "
                    "run.output_dir"
                )
            for path in previous:
                discard(path)
            tidy_staging(out)
        yield out
