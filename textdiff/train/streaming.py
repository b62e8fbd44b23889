"""Training on a streamed corpus (`data.streaming`, a `textdiff.data.streaming.PackedStream` as train set).

What HF Trainer + accelerate would do with a per-rank `datasets.IterableDataset` (transformers 5.25, accelerate
1.16, read in `accelerate.data_loader.prepare_data_loader`): with the default `dispatch_batches=None`, which means
True for an iterable dataset, rank 0 alone reads its own stream and sends slices of it to the others (the other
ranks' shards are never read, rank 0's is split again); with `dispatch_batches=False`, a `datasets` stream of at
least N shards is `.shard()`-ed again and any other stream is wrapped in `IterableDatasetShard`, which keeps each
rank's slice of every N batches of what it is given. Either way a stream already split by
`split_dataset_by_node` is sharded twice: blocks dropped or duplicated. So the train loader here is the rank's own
stream prepared as a one-process loader (accelerate only moves batches to the device), and Trainer's own resume
(skipping `global_step` batches of "epoch 0" of an iterator, `ignore_data_skip` off) is replaced by starting the
stream at the block the checkpoint recorded (training arguments set `ignore_data_skip` for streaming runs).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from textdiff.data.streaming import BatchCollator, PackedStream

STREAM_STATE_KEY = "stream_blocks_consumed"


class StreamingResume:
    """Trainer mixin (before `AtomicCheckpoints` in the bases): a `PackedStream` train set is read by each rank as
    its own batches of the endless stream (`PackedStream.for_rank`), and every checkpoint records the blocks
    consumed so far (`extra_checkpoint_state`), where a resumed run, at any number of ranks, starts its stream.
    Overrides Trainer's `get_train_dataloader` and `train`; extends `extra_checkpoint_state` /
    `load_extra_checkpoint_state` of AtomicCheckpoints."""

    _stream_start_block = 0
    """global block at which this `train()` call's stream starts."""
    _stream_start_step = 0
    """global step of the checkpoint this `train()` call resumed (0 for a fresh run)."""
    _stream_resuming = False
    _stream_position_loaded = False
    _stream_identity = None

    def _streaming(self) -> bool:
        return isinstance(self.train_dataset, PackedStream)

    def stream_blocks_consumed(self) -> int:
        """Blocks trained on since the run began (all ranks): every optimizer step consumes one global batch."""
        args = self.args
        global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        return self._stream_start_block + (self.state.global_step - self._stream_start_step) * global_batch

    def stream_results(self) -> dict:
        """What results.json records about the stream (nothing for an in-memory train set)."""
        return {STREAM_STATE_KEY: self.stream_blocks_consumed()} if self._streaming() else {}

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self._stream_start_block = self._stream_start_step = 0
        self._stream_resuming = resume_from_checkpoint not in (None, False)
        self._stream_position_loaded = False
        self._stream_identity = None
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def extra_checkpoint_state(self) -> dict | None:
        state = super().extra_checkpoint_state()
        if not self._streaming():
            return state
        return {**(state or {}), STREAM_STATE_KEY: self.stream_blocks_consumed(), "global_step": self.state.global_step,
                "stream_identity": self.train_dataset.identity}

    def load_extra_checkpoint_state(self, state: dict) -> None:
        super().load_extra_checkpoint_state(state)
        if STREAM_STATE_KEY in state:
            self._stream_start_block = int(state[STREAM_STATE_KEY])
            self._stream_start_step = int(state["global_step"])
            self._stream_position_loaded = True
            self._stream_identity = state.get("stream_identity")

    def get_train_dataloader(self) -> DataLoader:
        if not self._streaming():
            return super().get_train_dataloader()
        if self._stream_resuming and not self._stream_position_loaded:
            raise ValueError("data.streaming=true cannot resume this checkpoint: it records no stream position (it was "
                             "written by a run with data.streaming=false); resume it with data.streaming=false")
        saved, current = self._stream_identity, self.train_dataset.identity
        if self._stream_resuming and saved is not None and saved != current:
            changed = ", ".join(f"{key} {saved.get(key)!r} -> {current.get(key)!r}"
                                for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key))
            raise ValueError(f"cannot resume this checkpoint's stream position: the stream changed ({changed}); its "
                             "block count would point elsewhere in the new stream")
        from accelerate.data_loader import prepare_data_loader

        args = self.args
        batches = self.train_dataset.for_rank(args.process_index, args.world_size, args.per_device_train_batch_size,
                                              start_block=self._stream_start_block)
        # batch_size=None: each streamed row already is one batch of blocks. Its own generator: a loader without one
        # draws its workers' base seed from the global RNG at every iter(), and a resumed run (whose RNG state is
        # restored before that iter()) would then draw shifted noise from the first step on
        loader = DataLoader(batches, batch_size=None, collate_fn=BatchCollator(self.data_collator),
                            num_workers=args.dataloader_num_workers, pin_memory=args.dataloader_pin_memory,
                            generator=torch.Generator().manual_seed(args.seed))
        # one-process preparation: device placement only, no second sharding (see the module docstring)
        return prepare_data_loader(loader, device=args.device, num_processes=1, process_index=0, put_on_device=True,
                                   dispatch_batches=False)
