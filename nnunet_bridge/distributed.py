"""How ``segzoo-nnunet train`` runs: one process, processes torchrun started, or ``-num_gpus N``.

Every way ends in :func:`train_in_process`, nnU-Net's own sequence (trainer from the plans,
``--c`` checkpoint, training, final validation). With a process group initialised first,
nnU-Net's trainer runs in its DDP mode
(:class:`~nnunet_bridge.training.data_parallel.DataParallelTraining`):

- under torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
  set, on one machine or several) the bridge joins the process group torchrun describes and
  starts no process of its own;
- ``-num_gpus N`` spawns N processes on this machine, each set up as torchrun would set it up
  (nnU-Net's own ``-num_gpus`` spawns too, but hard-codes NCCL, and its children would look the
  trainer up by nnU-Net's search);
- the backend follows the device: NCCL on CUDA, gloo on the CPU (how the tests run this path);
- each process takes the GPU numbered ``LOCAL_RANK`` on its machine (:func:`rank_device`), never
  the global rank's, which names a GPU only the first machine has.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Mapping, Optional, Union

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

from . import ensure_ext_trainer_path
from .config import ConfigError
from .trainer_lookup import bridge_trainers_resolved

__all__ = ["ProcessPlace", "TrainingRun", "launch_training", "rank_device", "torchrun_place",
           "train_in_process"]

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclasses.dataclass(frozen=True)
class ProcessPlace:
    """Where this process stands in a data-parallel run."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """What ``segzoo-nnunet train`` trains: the arguments of nnU-Net's ``run_training``."""

    dataset: str
    configuration: str
    fold: str
    trainer: str = "nnUNetTrainerSegZoo"
    plans_identifier: str = "nnUNetPlans"
    device: str = "cuda"
    continue_training: bool = False
    only_validation: bool = False
    disable_checkpointing: bool = False
    val_best: bool = False
    save_probabilities: bool = False

    def __post_init__(self) -> None:
        if self.continue_training and self.only_validation:
            raise ConfigError("--c continues a training, --val only validates a finished one; use one of them")
        if self.val_best and self.disable_checkpointing:
            raise ConfigError("--val_best validates checkpoint_best.pth, which --disable_checkpointing never "
                              "writes; drop one of them")


def torchrun_place(environ: Mapping[str, str] = os.environ) -> Optional[ProcessPlace]:
    """This process's place if torchrun (or a launcher that sets the same variables) started it."""
    present = [name for name in TORCHRUN_VARIABLES if name in environ]
    if not present:
        return None
    missing = [name for name in TORCHRUN_VARIABLES if name not in environ]
    if missing:
        raise ConfigError(
            f"{', '.join(present)} set but not {', '.join(missing)}: launch with torchrun, which sets all of "
            f"{', '.join(TORCHRUN_VARIABLES)}, or unset {', '.join(present)} to train in one process"
        )
    values = {name: environ[name] for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    values["LOCAL_WORLD_SIZE"] = environ.get("LOCAL_WORLD_SIZE", values["WORLD_SIZE"])
    bad = [f"{name}={value!r}" for name, value in values.items() if not value.strip().isdigit()]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: not a whole number of 0 or more; launch with torchrun, which sets "
                          f"them, or unset {', '.join(present)} to train in one process")
    return ProcessPlace(rank=int(values["RANK"]), world_size=int(values["WORLD_SIZE"]),
                        local_rank=int(values["LOCAL_RANK"]), local_world_size=int(values["LOCAL_WORLD_SIZE"]))


def rank_device(place: ProcessPlace, requested: Union[str, torch.device]) -> torch.device:
    """The device of the process at ``place`` when ``requested`` (``-device``) is CUDA or the CPU.

    On CUDA it is ``cuda:LOCAL_RANK``: each machine's processes count their GPUs from 0, whereas
    the global rank (what nnU-Net takes) names GPUs that only the first machine has. A local
    rank without a visible GPU of that number is refused here, before any process group is joined.
    """
    kind = torch.device(requested).type
    if kind == "cpu":
        return torch.device("cpu")
    if kind != "cuda":
        raise ConfigError(f"-device {kind} cannot train on several processes; use -device cuda (NCCL) "
                          "or -device cpu (gloo)")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if place.local_rank >= visible:
        fix = (f"start at most {visible} processes per machine (torchrun --nproc-per-node {visible}) and let each "
               "see all of its machine's GPUs (CUDA_VISIBLE_DEVICES)" if visible else
               "run where GPUs are visible (check CUDA_VISIBLE_DEVICES) or train with -device cpu")
        raise ConfigError(f"LOCAL_RANK={place.local_rank} trains on cuda:{place.local_rank}, but this process sees "
                          f"{visible} CUDA devices; {fix}")
    return torch.device("cuda", place.local_rank)


def launch_training(run: TrainingRun, num_gpus: Optional[int] = None) -> None:
    """Train ``run`` in this process, in the processes torchrun started, or in ``num_gpus`` spawned ones."""
    place = torchrun_place()
    if place is not None:
        if num_gpus is not None:
            raise ConfigError(
                f"-num_gpus {num_gpus} under torchrun: torchrun has started the processes already "
                f"(WORLD_SIZE={place.world_size}); drop -num_gpus and set the number with torchrun's "
                "--nproc-per-node (and --nnodes)"
            )
        train_distributed(run, place)
        return
    processes = _checked_process_count(num_gpus, run.device)
    if processes == 1:
        train_in_process(run)
        return
    port = int(os.environ.get("MASTER_PORT") or _free_port())
    mp.spawn(_spawned_process, args=(run, processes, port), nprocs=processes, join=True)


def train_distributed(run: TrainingRun, place: ProcessPlace):
    """Join the process group (``MASTER_ADDR:MASTER_PORT``), train in nnU-Net's DDP mode, leave it."""
    device = rank_device(place, run.device)  # a bad LOCAL_RANK fails here, before the group waits on it
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // place.local_world_size))
        backend = "gloo"
    dist.init_process_group(backend, rank=place.rank, world_size=place.world_size)
    try:
        return train_in_process(run)
    finally:
        dist.destroy_process_group()


def train_in_process(run: TrainingRun):
    """nnU-Net's training sequence in this process (DDP mode if a process group is initialised);
    returns the trainer. The bridge's trainers are resolved directly, also in spawned processes."""
    fold = run.fold if run.fold == "all" else int(run.fold)
    device = torch.device(run.device)
    with bridge_trainers_resolved():
        trainer = get_trainer_from_args(run.dataset, run.configuration, fold, run.trainer, run.plans_identifier,
                                        run.continue_training, device=device)
    trainer.disable_checkpointing = run.disable_checkpointing
    maybe_load_checkpoint(trainer, run.continue_training, run.only_validation)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    if not run.only_validation:
        trainer.run_training()
    if run.val_best:
        trainer.load_checkpoint(os.path.join(trainer.output_folder, "checkpoint_best.pth"))
    trainer.perform_actual_validation(run.save_probabilities)
    return trainer


def _spawned_process(index: int, run: TrainingRun, processes: int, port: int) -> None:
    """One of ``-num_gpus N``'s processes, given the environment torchrun would give it."""
    os.environ.update(RANK=str(index), WORLD_SIZE=str(processes), LOCAL_RANK=str(index),
                      LOCAL_WORLD_SIZE=str(processes), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ensure_ext_trainer_path()
    if run.device == "cuda":
        torch.set_num_threads(1)
    train_distributed(run, ProcessPlace(index, processes, index, processes))


def _checked_process_count(num_gpus: Optional[int], device: str) -> int:
    processes = 1 if num_gpus is None else num_gpus
    if processes < 1:
        raise ConfigError(f"-num_gpus {num_gpus}: give 1 or more")
    if processes > 1 and device == "cuda" and processes > torch.cuda.device_count():
        raise ConfigError(f"-num_gpus {processes}: only {torch.cuda.device_count()} CUDA devices are visible; "
                          "give at most that many (CUDA_VISIBLE_DEVICES chooses which)")
    return processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
