"""Multi-process runs: what textdiff sets so that a launcher line (`torchrun`, `deepspeed`, `accelerate launch`,
`srun ... torchrun`) is all a user types, the combinations it refuses with one line, and what a run records.

Data parallelism itself is HF Trainer's (DDP, or DeepSpeed ZeRO when trainer.deepspeed is set). textdiff adds:
- on a machine without CUDA, DDP over gloo (`ddp_backend="gloo"`, ACCELERATE_USE_CPU) instead of NCCL;
- `ddp_find_unused_parameters=False`: every family's trunk uses all its parameters in each training step (tested
  in tests/train/test_distributed.py), so DDP needs no extra autograd traversal;
- per-example noise drawn for the global batch (`textdiff.schedules.batch_shard`, entered by the trainer), so
  ranks never share noise and N ranks x batch b train exactly like 1 rank x batch N*b;
- an evaluation summed over all ranks (`reduce_sums`), and results.json written by the main process only.
"""

from __future__ import annotations

import os

import torch

DEEPSPEED_ZERO3_PRESET = "zero3"


def world_size() -> int:
    """Processes of this run (the launcher's WORLD_SIZE; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_rank() -> int:
    """Global rank of this process (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def _zero_stage(deepspeed_config: str) -> int | None:
    import json

    with open(deepspeed_config, encoding="utf-8") as f:
        stage = json.load(f).get("zero_optimization", {}).get("stage")
    return int(stage) if stage is not None else None


def check_scale_out(*, deepspeed_config: str | None, lora_rank: int) -> None:
    """One-line refusals of combinations that cannot run, before anything is built. `deepspeed_config` is the
    resolved JSON path (a missing file is refused earlier, by the recipe check of trainer.deepspeed)."""
    if deepspeed_config is not None and lora_rank > 0 and _zero_stage(deepspeed_config) == 3:
        raise ValueError(
            "trainer.deepspeed ZeRO-3 with model.lora_rank > 0 is unsupported: the LoRA factors are merged into the "
            "base weights at the end and ZeRO-3 partitions those weights; use trainer.deepspeed=zero2 (LoRA's "
            "frozen base is small per rank anyway) or plain DDP"
        )


FSDP_STRATEGIES = {"full_shard": True, "shard_grad_op": False}  # -> FSDP2 reshard_after_forward


def check_fsdp(fsdp: str, *, deepspeed: str | None = None) -> None:
    """One-line refusals of trainer.fsdp: an unknown option, FSDP with DeepSpeed, FSDP without CUDA. On a CPU,
    accelerate 1.16 enables FSDP only for GPU-class process groups (MULTI_GPU / NPU / XPU ...,
    `AcceleratorState`), so HF Trainer with fsdp=full_shard in 2 gloo processes trains plain DDP without a word
    (measured: DistributedDataParallel, is_fsdp_enabled False; tests/train/test_distributed.py)."""
    words = fsdp.split()
    if len([w for w in words if w in FSDP_STRATEGIES]) != 1 or any(w not in (*FSDP_STRATEGIES, "offload") for w in words):
        raise ValueError(f"trainer.fsdp={fsdp!r}: expected one of {', '.join(FSDP_STRATEGIES)}, optionally followed "
                         "by ' offload'")
    if deepspeed is not None:
        raise ValueError(f"trainer.fsdp={fsdp!r} and trainer.deepspeed={deepspeed!r} are two sharding engines: "
                         "set one of them")
    if not torch.cuda.is_available():
        raise ValueError(f"trainer.fsdp={fsdp!r} needs CUDA GPUs: accelerate turns FSDP on only for GPU processes "
                         "and on a CPU would train plain DDP; on a CPU use trainer.deepspeed=zero2 or zero3 "
                         "(ZeRO-3 shards the parameters as full_shard does) or plain DDP (no trainer.fsdp)")


def fsdp_training_arguments(fsdp: str | None) -> dict:
    """TrainingArguments of trainer.fsdp (checked by `check_fsdp`): FSDP2 through fsdp_config, not the deprecated
    string form; layers wrapped by transformers' default policy (the model's `_no_split_modules`). Not run here."""
    if not fsdp:
        return {}
    words = fsdp.split()
    strategy = next(w for w in words if w in FSDP_STRATEGIES)
    return {"fsdp": True, "fsdp_config": {"reshard_after_forward": FSDP_STRATEGIES[strategy],
                                          "cpu_offload": "offload" in words}}


def distributed_training_arguments(*, deepspeed: bool = False) -> dict:
    """TrainingArguments for a multi-process launch (empty for one process). For DDP on a CPU machine, gloo and
    ACCELERATE_USE_CPU: without it accelerate runs each torchrun process alone (DistributedType.NO). Not under
    DeepSpeed, which picks its backend itself (gloo on CPU) and which ACCELERATE_USE_CPU would silently replace by
    plain DDP."""
    if world_size() == 1:
        return {}
    kwargs: dict = {"ddp_find_unused_parameters": False}
    if not torch.cuda.is_available() and not deepspeed:
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
        kwargs["ddp_backend"] = "gloo"
    return kwargs


def scale_results(args) -> dict:
    """What results.json records about the data-parallel layout (`args`: the trainer's TrainingArguments)."""
    per_rank = args.per_device_train_batch_size
    return {
        "world_size": args.world_size,
        "per_rank_batch_size": per_rank,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "effective_batch_size": per_rank * args.gradient_accumulation_steps * args.world_size,
        "ddp_backend": args.ddp_backend if args.world_size > 1 else None,
    }


def reduce_sums(*values: float, device: torch.device | str = "cpu") -> list[float]:
    """Each value summed over the ranks (unchanged in one process): evaluation totals of the rank's shard."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [float(v) for v in values]
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def process_group_owned() -> bool:
    """Whether a process group already exists before a run: one the caller made, which `end_run_process_group`
    leaves alone."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def end_run_process_group(*, owned_by_caller: bool) -> None:
    """End of a multi-process run: all ranks meet, then the process group the run created (HF Trainer /
    accelerate / DeepSpeed) is destroyed before the interpreter exits. Without it a rank that finished early
    (every rank but the main one skips the report) exited while the main rank still wrote results, and 2-process
    DeepSpeed ZeRO-3 runs on CPU died at exit, after a complete run, in 1 of 8 tries here ("terminate called
    without an active exception", SIGABRT of rank 1, so torchrun reported failure)."""
    import torch.distributed as dist

    if owned_by_caller or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    dist.barrier()
    dist.destroy_process_group()


class CrossWorldResume:
    """Trainer mixin: resume a checkpoint written by another number of processes with the RNG state it saved.
    Trainer writes rng_state.pth (one process) or rng_state_<rank>.pth (several) and, finding no file of its own
    name, silently continues with a fresh RNG. textdiff's ranks hold one RNG state (every rank makes the same
    draws, `batch_shard`), so any rank's file is the state of all: loaded in place of the missing one. Overrides
    Trainer's `_load_rng_state` (transformers 5, tested to exist)."""

    def _load_rng_state(self, checkpoint: str | None) -> None:
        import tempfile
        from pathlib import Path

        own = "rng_state.pth" if self.args.world_size == 1 else f"rng_state_{self.args.process_index}.pth"
        saved = sorted(Path(checkpoint).glob("rng_state*.pth")) if checkpoint is not None else []
        if checkpoint is None or (Path(checkpoint) / own).is_file() or not saved:
            return super()._load_rng_state(checkpoint)
        with tempfile.TemporaryDirectory() as stand_in:  # the saved file under this world's name
            os.symlink(saved[0].resolve(), Path(stand_in) / own)
            super()._load_rng_state(stand_in)
