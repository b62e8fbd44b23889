"""trainer.fsdp: HF Trainer's FSDP2 on CUDA GPUs, refused in one line on a CPU.

Why refused: accelerate 1.16 enables FSDP only for GPU-class process groups, so on this CPU machine HF Trainer
with FSDP asked for in 2 gloo processes trains plain DDP without a word. The slow test launches exactly that and
fails the day accelerate starts sharding on CPU (then the refusal can go).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from textdiff.train.distributed import check_fsdp, fsdp_training_arguments

ROOT = Path(__file__).parents[2]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")


@NO_CUDA
@pytest.mark.parametrize(("overrides", "expect"), [
    (["trainer.fsdp=full_shard"], "trainer.fsdp='full_shard' needs CUDA GPUs: accelerate turns FSDP on only for GPU"),
    (["trainer.fsdp='shard_grad_op offload'"], "on a CPU use trainer.deepspeed=zero2 or zero3"),
    (["trainer.fsdp=hybrid"], "trainer.fsdp='hybrid': expected one of full_shard, shard_grad_op"),
    (["trainer.fsdp=full_shard", "trainer.deepspeed=zero2"], "are two sharding engines: set one of them"),
])
def test_fsdp_bad_input_is_one_line(overrides, expect, tmp_path, capsys):
    from textdiff.cli import main

    rc = main(["train", "recipes/masked/stdlib_pretrain.yaml", f"run.output_dir={tmp_path / 'out'}", *overrides])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("textdiff train: error: ")]
    assert rc == 2 and "Traceback" not in err
    assert len(lines) == 1 and expect in lines[0], err
    assert not (tmp_path / "out").exists()


def test_fsdp_options_become_fsdp2_config(monkeypatch):
    assert fsdp_training_arguments(None) == {}
    assert fsdp_training_arguments("full_shard") == {
        "fsdp": True, "fsdp_config": {"reshard_after_forward": True, "cpu_offload": False}}
    assert fsdp_training_arguments("shard_grad_op offload") == {
        "fsdp": True, "fsdp_config": {"reshard_after_forward": False, "cpu_offload": True}}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_fsdp("full_shard offload")  # accepted where CUDA is
    with pytest.raises(ValueError, match="expected one of"):
        check_fsdp("full_shard shard_grad_op")


PROBE = '''
import json, os, sys
import torch
from transformers import TrainingArguments
from tests.conftest import tiny_config
from tests.train.test_trainer import token_dataset
from textdiff.data import PackedCollator
from textdiff.modeling import TextDiffModel
from textdiff.objectives import MaskedDiffusionObjective
from textdiff.train.trainer import DiffusionTrainer

os.environ["ACCELERATE_USE_CPU"] = "true"  # what textdiff sets for DDP on a CPU
torch.manual_seed(0)
args = TrainingArguments(output_dir=sys.argv[1], max_steps=2, per_device_train_batch_size=4, report_to=[],
                         remove_unused_columns=False, label_names=[], use_cpu=True, save_strategy="no",
                         ddp_backend="gloo", disable_tqdm=True, fsdp=True, fsdp_config={"reshard_after_forward": True})
trainer = DiffusionTrainer(model=TextDiffModel(tiny_config()).train(), args=args, train_dataset=token_dataset(),
                           data_collator=PackedCollator(), objective=MaskedDiffusionObjective(mask_token_id=66))
trainer.train()
if trainer.args.process_index == 0:
    with open(os.path.join(sys.argv[1], "probe.json"), "w") as f:
        json.dump({"world_size": trainer.args.world_size, "distributed_type": str(trainer.accelerator.distributed_type),
                   "is_fsdp_enabled": trainer.is_fsdp_enabled, "engine": type(trainer.model_wrapped).__name__}, f)
'''


@NO_CUDA
@pytest.mark.slow
def test_hf_trainer_asked_for_fsdp_in_two_cpu_processes_trains_plain_ddp(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(29700 + os.getpid() % 200), str(script), str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    probe = json.loads((tmp_path / "probe.json").read_text())  # written once training ended (the exit may abort)
    assert probe == {"world_size": 2, "distributed_type": "DistributedType.MULTI_CPU", "is_fsdp_enabled": False,
                     "engine": "DistributedDataParallel"}, proc.stderr[-3000:]
