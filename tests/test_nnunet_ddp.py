"""Data-parallel training through real nnU-Net, two CPU processes on the gloo backend.

The same trainer and code path as on GPUs (nnU-Net's DDP mode, the bridge's process group,
DistributedDataParallel without find_unused_parameters), launched as users launch it: torchrun
(``python -m torch.distributed.run ... -m nnunet_bridge train``) and ``-num_gpus 2``. A test
trainer (``tests/nnunet_trainers``) writes each rank's weights and state after the final
validation, so the checks are on both processes, not only on what rank 0 saved. The torchrun
run compiles and trains compiled (with backends whose graphs count their runs); the
``-num_gpus`` run's compile fails on one rank and both continue eager.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from nnunet_bridge.demo.synthetic import write_fundus_dataset
from tests.nnunet_runs import ROOT, nnunet_env, run
from tests.tiny_models import TINY_MASK2FORMER, TINY_VIT, TINY_WIDTH

DATASET_ID = 989
TRAINER = "nnUNetTrainerSegZooRankReport"
REPORTS_ENV = "SEGZOO_TEST_RANK_REPORTS"
# aot_eager and eager (fast on the CPU), their graphs counting their runs (tests/nnunet_trainers)
AOT_EAGER_COUNTED, EAGER_COUNTED = "segzoo_test_aot_eager_counted", "segzoo_test_eager_counted"
TRAIN = {"num_epochs": 2, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1, "warmup_epochs": 1,
         "save_every": 1, "batch_size": 4}
PER_RANK = re.compile(r"training throughput: ([\d.]+) images/s .*; per rank: ([\d., ]+) images/s")

# one worker runs this module: its tests share the module fixture's nnU-Net folders
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.xdist_group("nnunet_ddp")]


@pytest.fixture(scope="session")  # one per worker: xdist may interleave other modules' tests
def ddp_env():
    """nnU-Net folders with a tiny dataset planned and preprocessed (2d), for every test here."""
    base = Path(tempfile.mkdtemp(prefix="segzoo_nnunet_ddp_"))
    env = nnunet_env(base, nnUNet_extTrainer=str(ROOT / "tests" / "nnunet_trainers"), OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    try:
        write_fundus_dataset(env["nnUNet_raw"], DATASET_ID, num_train=6, num_test=1, size=64, channels=3)
        run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "-np", "1", "-npfp", "1"], env)
        yield {"env": dict(env, nnUNet_n_proc_DA="0"), "base": base}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_torchrun_trains_upernet_compiled_in_step_on_both_ranks_and_continues(ddp_env):
    """UperNet (BatchNorm -> SyncBatchNorm) under torchrun, compiled regionally (``nnUNet_compile=t``;
    aot_eager: dynamo's graphs and AOT autograd's backward, as inductor gets them, without code
    generation), then ``--c`` with one more epoch, compiled again (eager backend: dynamo only,
    the cheapest compile that shows the resumed run trains compiled)."""
    name = _plan(ddp_env, "upernet_dinov3_small", "2d_ddp_upernet")
    compiled = ddp_env["base"] / "compiled.yaml"
    compiled.write_text(yaml.safe_dump({"train": {**TRAIN, "compile_backend": AOT_EAGER_COUNTED}}))
    reports = _torchrun(ddp_env, ["train", str(DATASET_ID), name, "0", "-tr", TRAINER, "-device", "cpu",
                                  "--config", str(compiled)], nnUNet_compile="t")
    _check_ranks_agree(reports)
    _check_trained_compiled(reports, steps=TRAIN["num_epochs"] * TRAIN["num_iterations_per_epoch"])
    assert [r["network_type"] for r in reports] == ["DistributedDataParallel"] * 2
    for report in reports:  # SyncBatchNorm, as the CPU runs it; no plain BatchNorm left
        assert "CpuSyncBatchNorm" in report["norm_types"] and "BatchNorm2d" not in report["norm_types"]
    assert [r["batch_size"] for r in reports] == [2, 2]  # the planned batch of 4, shared
    assert reports[0]["written"].count("checkpoint_final.pth") == 1 and reports[1]["written"] == []
    fold = _fold(ddp_env, name)
    assert sorted(p.name for p in fold.glob("*.pth")) == ["checkpoint_best.pth", "checkpoint_final.pth"]
    assert len(list(fold.glob("training_log_*.txt"))) == 1 and (fold / "segzoo_config.yaml").is_file()
    assert (fold / "validation" / "summary.json").is_file()
    log = max(fold.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime_ns).read_text()
    assert f"Compiling the zoo model regionally (torch.compile, backend {AOT_EAGER_COUNTED})" in log
    assert "torch.compile failed" not in log
    _print_throughput(fold, name)

    longer = ddp_env["base"] / "longer.yaml"
    longer.write_text(yaml.safe_dump({"train": {**TRAIN, "num_epochs": 3, "compile_backend": EAGER_COUNTED}}))
    (fold / "validation" / "summary.json").unlink()
    reports = _torchrun(ddp_env, ["train", str(DATASET_ID), name, "0", "-tr", TRAINER, "-device", "cpu", "--c",
                                  "--config", str(longer)], nnUNet_compile="t")
    _check_ranks_agree(reports)
    _check_trained_compiled(reports, steps=TRAIN["num_iterations_per_epoch"])  # the one more epoch
    log = max(fold.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime_ns).read_text()
    assert f"backend {EAGER_COUNTED}" in log and "torch.compile failed" not in log
    assert [r["resumed_from_epoch"] for r in reports] == [2, 2]
    assert [r["current_epoch"] for r in reports] == [3, 3]
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 3 and not any("_orig_mod" in k for k in final["network_weights"])
    for key, value in final["network_weights"].items():
        torch.testing.assert_close(value, reports[0]["weights"][key], atol=0, rtol=0)
    assert (fold / "validation" / "summary.json").is_file()


def test_num_gpus_spawns_processes_for_mask2former_with_lora_and_falls_back_to_eager_together(ddp_env):
    """``-num_gpus 2 -device cpu``: Mask2Former with LoRA, compiled with a backend that fails on
    rank 1 only, so both ranks must agree to continue eager."""
    name = _plan(ddp_env, "mask2former_dinov3_small", "2d_ddp_m2f_lora", lora=True,
                 kwargs={"backbone_kwargs": dict(TINY_VIT), **TINY_MASK2FORMER})
    config = ddp_env["base"] / "rank1_fails.yaml"
    config.write_text(yaml.safe_dump({"train": {**TRAIN, "compile_backend": "segzoo_test_fails_on_rank_1"}}))
    reports = _reports(ddp_env, name, ["train", str(DATASET_ID), name, "0", "-tr", TRAINER, "-device", "cpu",
                                       "-num_gpus", "2", "--config", str(config)], nnUNet_compile="t")
    _check_ranks_agree(reports)
    lora_b = [k for k in reports[0]["weights"] if "lora_B" in k]
    assert lora_b and any(reports[0]["weights"][k].abs().sum() > 0 for k in lora_b), "adapters did not train"
    assert [r["compiled"] for r in reports] == [False, False]
    fold = _fold(ddp_env, name)
    log = max(fold.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime_ns).read_text()
    assert "torch.compile failed at the first training step (on another rank); training continues eager" in log
    assert (fold / "validation" / "summary.json").is_file()
    _print_throughput(fold, name)


def test_launch_errors_name_the_fix(monkeypatch):
    from nnunet_bridge.config import ConfigError
    from nnunet_bridge.distributed import TrainingRun, launch_training

    run = TrainingRun(str(DATASET_ID), "2d_ddp_upernet", "0", device="cpu")
    for key, value in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ConfigError, match="set but not MASTER_PORT: launch with torchrun"):
        launch_training(run)
    monkeypatch.setenv("MASTER_PORT", "29999")
    with pytest.raises(ConfigError, match="-num_gpus 2 under torchrun.*--nproc-per-node"):
        launch_training(run, num_gpus=2)
    with pytest.raises(ConfigError, match="--c continues a training, --val only validates"):
        TrainingRun(str(DATASET_ID), "2d_ddp_upernet", "0", continue_training=True, only_validation=True)


def test_a_batch_that_does_not_divide_among_the_ranks_is_refused():
    from nnunet_bridge.config import ConfigError
    from nnunet_bridge.training.data_parallel import check_batch_divides

    check_batch_divides(8, 4)
    with pytest.raises(ConfigError, match=r"batch size 6 does not divide among 4 processes.*e\.g\. 4 or 8"):
        check_batch_divides(6, 4)
    with pytest.raises(ConfigError, match=r"batch size 3 does not divide among 4 processes.*\(e\.g\. 4\)"):
        check_batch_divides(3, 4)


def _sync_bn_worker(rank: int, port: int) -> None:
    from nnunet_bridge.training.sync_batchnorm import CpuSyncBatchNorm, let_sync_batchnorm_run_on_cpu

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        reference = torch.nn.BatchNorm2d(3)
        with torch.no_grad():
            reference.weight.uniform_(0.5, 1.5)
            reference.bias.uniform_(-0.5, 0.5)
        synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(torch.nn.Sequential(_copy(reference)))
        assert let_sync_batchnorm_run_on_cpu(synced) == 1 and type(synced[0]) is CpuSyncBatchNorm
        both = torch.randn(4, 3, 5, 6) * 3 + 1  # the global batch; each rank holds half
        mine = both[2 * rank:2 * rank + 2].clone().requires_grad_()
        everything = both.clone().requires_grad_()
        for _ in range(2):  # running statistics move the same way twice
            out = synced(mine)
            expected = reference(everything)
            torch.testing.assert_close(out, expected[2 * rank:2 * rank + 2])
        (out * out.detach().cos()).sum().backward()
        (expected * expected.detach().cos()).sum().backward()
        torch.testing.assert_close(mine.grad, everything.grad[2 * rank:2 * rank + 2])
        grads = torch.cat([synced[0].weight.grad, synced[0].bias.grad])
        dist.all_reduce(grads)  # as DDP sums each rank's share of the parameter gradients
        torch.testing.assert_close(grads, torch.cat([reference.weight.grad, reference.bias.grad]))
        torch.testing.assert_close(synced[0].running_mean, reference.running_mean)
        torch.testing.assert_close(synced[0].running_var, reference.running_var)
    finally:
        dist.destroy_process_group()


def test_cpu_sync_batchnorm_equals_batchnorm_over_the_global_batch():
    """Two ranks with half a batch each: outputs, input and parameter gradients and running
    statistics as one BatchNorm over the whole batch."""
    mp.spawn(_sync_bn_worker, args=(_free_port(),), nprocs=2, join=True)


# -- helpers -----------------------------------------------------------------------------


def _copy(module: torch.nn.Module) -> torch.nn.Module:
    clone = type(module)(module.num_features)
    clone.load_state_dict(module.state_dict())
    return clone


def _plan(ddp_env, model: str, name: str, lora: bool = False, kwargs: dict | None = None) -> str:
    plans = json.loads(next(Path(ddp_env["env"]["nnUNet_preprocessed"]).glob(f"Dataset{DATASET_ID}_*"))
                       .joinpath("nnUNetPlans.json").read_text())
    if name in plans["configurations"]:
        return name
    config = ddp_env["base"] / f"{name}.yaml"
    weights = {"checkpoint_path": _tiny_backbone_file(ddp_env, model)} if lora else {}  # plan refuses LoRA without
    config.write_text(yaml.safe_dump({
        "model": {"name": model, "pretrained": False, "decoder_hidden_size": TINY_WIDTH, **weights,
                  "kwargs": kwargs or {"backbone_kwargs": dict(TINY_VIT)}},
        "lora": {"enabled": lora, "r": 4},
        "train": TRAIN,
    }))
    run([sys.executable, "-m", "nnunet_bridge", "plan", str(DATASET_ID), "--config", str(config), "--name", name],
         ddp_env["env"])
    return name


def _tiny_backbone_file(ddp_env, model: str) -> str:
    """Weights for the tiny backbone (timm's layout, random values): what LoRA adapts."""
    import timm
    from safetensors.torch import save_file

    from segzoo.backbones import BACKBONES
    from tests.tiny_models import backbone_of

    path = ddp_env["base"] / f"{backbone_of(model)}_tiny.safetensors"
    if not path.is_file():
        vit = timm.create_model(BACKBONES[backbone_of(model)].timm_arch, num_classes=0, **TINY_VIT)
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return str(path)


def _torchrun(ddp_env, args: list[str], **env: str) -> list[dict]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return _reports(ddp_env, args[2], [*launcher, "-m", "nnunet_bridge", *args], command=True, **env)


def _reports(ddp_env, name: str, args: list[str], command: bool = False, **env: str) -> list[dict]:
    """Run the command (a bridge command unless ``command``); return each rank's report."""
    reports = ddp_env["base"] / "reports" / name
    shutil.rmtree(reports, ignore_errors=True)
    reports.mkdir(parents=True)
    cmd = args if command else [sys.executable, "-m", "nnunet_bridge", *args]
    run(cmd, dict(ddp_env["env"], **{REPORTS_ENV: str(reports)}, **env))
    return [torch.load(reports / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _check_ranks_agree(reports: list[dict]) -> None:
    assert [r["world_size"] for r in reports] == [2, 2]
    first, second = (r["weights"] for r in reports)
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=0, rtol=0, msg=f"{key} differs between ranks")


def _check_trained_compiled(reports: list[dict], steps: int) -> None:
    """Each rank still compiled at the end (no fall-back), dynamo compiled graphs in it, and
    every training step ran compiled graphs (the same number on both ranks)."""
    assert [r["compiled"] for r in reports] == [True, True], "a rank fell back to eager or never compiled"
    for rank, report in enumerate(reports):
        assert report["dynamo_graphs"] > 0, f"rank {rank}: dynamo compiled no graph"
        runs = report["compiled_graph_runs_per_train_step"]
        assert len(runs) == steps and all(n > 0 for n in runs), f"rank {rank}: a training step ran eager: {runs}"
    assert reports[0]["compiled_graph_runs_per_train_step"] == reports[1]["compiled_graph_runs_per_train_step"]


def _fold(ddp_env, name: str) -> Path:
    dataset = next(Path(ddp_env["env"]["nnUNet_results"]).glob(f"Dataset{DATASET_ID}_*"))
    return dataset / f"{TRAINER}__nnUNetPlans__{name}" / "fold_0"


def _print_throughput(fold: Path, name: str) -> None:
    log = max(fold.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime_ns).read_text()
    total, per_rank = PER_RANK.findall(log)[-1]
    print(f"{name}: {total} images/s on 2 CPU processes (per rank: {per_rank})")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compile_fallback_worker(rank: int, port: int) -> None:
    """One rank of the SegFormer head (BatchNorm -> SyncBatchNorm -> CpuSyncBatchNorm) trained
    through the bridge's collective compile fall-back with a backend failing on rank 1 only."""
    import segzoo
    from nnunet_bridge.network import ZooNetwork
    from nnunet_bridge.training.sync_batchnorm import let_sync_batchnorm_run_on_cpu
    from tests.nnunet_trainers.rank_report_trainers import RANK1_FAILS_BACKEND
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # same initial weights on both ranks
        model = segzoo.create_model("segformer_dinov3_small", num_classes=2, pretrained=False,
                                    backbone_kwargs=dict(TINY_VIT), decoder_hidden_size=TINY_WIDTH)
        bare = torch.nn.SyncBatchNorm.convert_sync_batchnorm(ZooNetwork(model))  # as nnU-Net's DDP mode
        assert let_sync_batchnorm_run_on_cpu(bare) > 0, "the SegFormer head has no BatchNorm to sync"
        segzoo.compile_model(model, "regional", backend=RANK1_FAILS_BACKEND)
        trainer = _FallbackTrainer(bare)
        network = DistributedDataParallel(bare)
        torch.manual_seed(100 + rank)  # different data per rank
        for _ in range(2):
            x, target = torch.randn(2, 3, 32, 32), torch.randint(0, 2, (2, 32, 32))

            def step() -> None:
                out = network(x)
                loss = torch.nn.functional.cross_entropy(out[0] if isinstance(out, (list, tuple)) else out, target)
                trainer.optimizer.zero_grad()
                loss.backward()
                trainer.optimizer.step()

            trainer._with_eager_fallback("training step", step)
        assert not segzoo.is_compiled(model), f"rank {rank} is still compiled"
        weights = torch.cat([t.detach().flatten().float() for t in bare.state_dict().values()])
        gathered = [torch.empty_like(weights) for _ in range(2)]
        dist.all_gather(gathered, weights)
        torch.testing.assert_close(gathered[0], gathered[1], atol=0, rtol=0)
    finally:
        dist.destroy_process_group()


class _FallbackTrainer:
    """What the bridge's compile fall-back reads of a trainer, around a real network (no nnU-Net run)."""

    from nnunet_bridge.training.compilation import CompilesRegionally as _c

    _with_eager_fallback = _c._with_eager_fallback
    _check_compiles_on_every_rank = _c._check_compiles_on_every_rank
    _try_compiled_forward = _c._try_compiled_forward
    _fall_back_to_eager = _c._fall_back_to_eager
    is_ddp, device, batch_size, num_input_channels = True, torch.device("cpu"), 2, 3

    def __init__(self, network: torch.nn.Module):
        self.network, self._compiled_steps_checked = network, set()
        self.configuration_manager = type("Plan", (), {"patch_size": (32, 32)})()
        self.optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
        self.log: list[str] = []

    def bare_network(self) -> torch.nn.Module:
        return self.network

    def print_to_log_file(self, *args: object) -> None:
        self.log.append(" ".join(map(str, args)))


def test_compile_failing_on_one_rank_falls_back_together_with_sync_batchnorm():
    """Two gloo ranks, SegFormer's head with SyncBatchNorm, compiled with a backend that fails on
    rank 1 only: the trial forward's BatchNorm must not meet the fall-back flag's all-reduce (a
    mismatch aborts gloo, hangs NCCL). Both ranks end eager with the same weights, within a minute."""
    context = mp.spawn(_compile_fallback_worker, args=(_free_port(),), nprocs=2, join=False)
    deadline = time.monotonic() + 60
    try:
        while not context.join(timeout=1):
            assert time.monotonic() < deadline, "the ranks hang in the compile fall-back"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
