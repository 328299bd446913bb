"""A LoRA model trains under DistributedDataParallel without find_unused_parameters,
eager and compiled regionally before wrapping.

Two CPU processes on the gloo backend. DDP built without ``find_unused_parameters``
raises at the second step's forward if any trainable parameter got no gradient in the
first, so a couple of steps is the check.
"""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import segzoo
from segzoo.optim import param_groups

from tests.tiny_models import TINY

STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, compiled: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)  # same initial weights on every rank
        model = segzoo.create_model("segformer_dinov3_base", num_classes=3, lora=dict(r=4), **TINY)
        if compiled:  # in place, before wrapping, as timm does
            segzoo.compile_model(model, backend="aot_eager")
        ddp = DistributedDataParallel(model)  # find_unused_parameters=False (the default)
        optimizer = torch.optim.AdamW(param_groups(model, lr=1e-3))
        torch.manual_seed(100 + rank)  # different data per rank
        for _ in range(STEPS):
            x, target = torch.randn(2, 3, 48, 48), torch.randint(0, 3, (2, 48, 48))
            loss = torch.nn.functional.cross_entropy(ddp(x), target)
            optimizer.zero_grad()
            loss.backward()
            trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            no_grad = [n for n, p in trainable if p.grad is None]
            assert no_grad == [], f"rank {rank}: no gradient for {no_grad}"
            grads = torch.cat([p.grad.flatten() for _, p in trainable])
            gathered = [torch.empty_like(grads) for _ in range(world_size)]
            dist.all_gather(gathered, grads)
            torch.testing.assert_close(gathered[0], gathered[1], atol=0, rtol=0)
            optimizer.step()
        lora_b = model.backbone.model.blocks[0].attn.qkv.lora_B["default"].weight
        assert lora_b.abs().sum() > 0, "adapters did not train"
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(params) for _ in range(world_size)]
        dist.all_gather(gathered, params)
        torch.testing.assert_close(gathered[0], gathered[1], atol=0, rtol=0)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_lora_model_trains_under_ddp_without_find_unused_parameters(compiled):
    mp.spawn(_worker, args=(2, _free_port(), compiled), nprocs=2, join=True)
