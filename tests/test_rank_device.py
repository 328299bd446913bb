"""The device each data-parallel process takes, from torchrun's variables, without starting processes.

CUDA is mocked (``is_available``, ``device_count``, ``set_device``) and so is joining the process
group, so these run anywhere; tests/test_nnunet_ddp.py trains with real processes on the CPU.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist

from nnunet_bridge import distributed
from nnunet_bridge.config import ConfigError
from nnunet_bridge.distributed import TrainingRun, launch_training, rank_device, torchrun_place
from nnunet_bridge.training.data_parallel import process_device

GPUS_PER_MACHINE = 4


@pytest.fixture
def launched(monkeypatch) -> dict[str, Any]:
    """A machine with ``GPUS_PER_MACHINE`` mocked GPUs; records what the launch sets and joins,
    and trains nothing."""
    calls: dict[str, Any] = {"set_device": [], "init_process_group": [], "trained": [], "threads": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: GPUS_PER_MACHINE)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls["set_device"].append(torch.device(device)))
    monkeypatch.setattr(torch, "set_num_threads", calls["threads"].append)  # keep this process's threads
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend, **kwargs: calls["init_process_group"].append((backend, kwargs)))
    monkeypatch.setattr(dist, "destroy_process_group", lambda *args, **kwargs: None)
    monkeypatch.setattr(distributed, "train_in_process", calls["trained"].append)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    return calls


def _torchrun_env(monkeypatch, rank: int, local_rank: int, world_size: int = 8) -> None:
    """What torchrun sets for one process of ``world_size``, ``GPUS_PER_MACHINE`` per machine."""
    for name, value in dict(RANK=rank, WORLD_SIZE=world_size, LOCAL_RANK=local_rank,
                            LOCAL_WORLD_SIZE=GPUS_PER_MACHINE, MASTER_ADDR="node001", MASTER_PORT=29500).items():
        monkeypatch.setenv(name, str(value))


@pytest.mark.parametrize("rank, local_rank", [(0, 0), (3, 3), (5, 1), (7, 3)])
def test_each_rank_trains_on_the_gpu_of_its_local_rank(launched, monkeypatch, rank, local_rank):
    """Two machines of four GPUs: global rank 5 is the second process of the second machine, cuda:1."""
    _torchrun_env(monkeypatch, rank, local_rank)
    expected = torch.device("cuda", local_rank)
    assert rank_device(torchrun_place(), "cuda") == expected
    assert process_device(torch.device("cuda")) == expected  # the trainer's device agrees

    run = TrainingRun("989", "2d", "0", device="cuda")
    launch_training(run)
    assert launched["set_device"] == [expected]
    assert launched["init_process_group"] == [("nccl", {"rank": rank, "world_size": 8})]
    assert launched["trained"] == [run]


def test_cpu_ranks_train_on_the_cpu_with_gloo(launched, monkeypatch):
    _torchrun_env(monkeypatch, rank=5, local_rank=1)
    assert rank_device(torchrun_place(), "cpu") == torch.device("cpu")
    assert process_device(torch.device("cpu")) == torch.device("cpu")

    launch_training(TrainingRun("989", "2d", "0", device="cpu"))
    assert launched["set_device"] == []
    assert launched["init_process_group"] == [("gloo", {"rank": 5, "world_size": 8})]
    assert len(launched["threads"]) == 1 and launched["threads"][0] >= 1  # the cores shared by the local ranks


def test_nnunet_own_num_gpus_without_local_rank_takes_the_gpu_of_the_rank(launched, monkeypatch):
    """``nnUNetv2_train -num_gpus 2`` sets only MASTER_ADDR / MASTER_PORT (one machine: local rank = rank)."""
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setattr(dist, "get_rank", lambda *args: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda *args: 2)
    assert process_device(torch.device("cuda")) == torch.device("cuda", 1)


def test_a_local_rank_without_its_gpu_is_refused_before_joining(launched, monkeypatch):
    _torchrun_env(monkeypatch, rank=4, local_rank=GPUS_PER_MACHINE)
    fix = r"LOCAL_RANK=4 trains on cuda:4, but this process sees 4 CUDA devices; start at most 4 processes per " \
          r"machine \(torchrun --nproc-per-node 4\) and let each see all of its machine's GPUs \(CUDA_VISIBLE_DEVICES\)"
    with pytest.raises(ConfigError, match=fix):
        launch_training(TrainingRun("989", "2d", "0", device="cuda"))
    with pytest.raises(ConfigError, match=fix):
        process_device(torch.device("cuda"))
    assert launched["set_device"] == [] and launched["init_process_group"] == []  # raised before the group

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    _torchrun_env(monkeypatch, rank=0, local_rank=0)
    with pytest.raises(ConfigError, match=r"sees 0 CUDA devices; run where GPUs are visible .* -device cpu"):
        rank_device(torchrun_place(), "cuda")


def test_bad_torchrun_variables_and_devices_name_the_fix(launched, monkeypatch):
    _torchrun_env(monkeypatch, rank=0, local_rank=0)
    monkeypatch.setenv("LOCAL_RANK", "gpu1")
    with pytest.raises(ConfigError, match=r"LOCAL_RANK='gpu1': not a whole number of 0 or more; launch with torchrun"):
        torchrun_place()
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match=r"-device mps cannot train on several processes; use -device cuda"):
        launch_training(TrainingRun("989", "2d", "0", device="mps"))
    assert launched["init_process_group"] == []
