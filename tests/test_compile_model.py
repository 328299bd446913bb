"""segzoo.compile_model: regional and whole-graph compilation, in place, matching eager.

Most cases use the ``aot_eager`` backend (dynamo + AOT autograd, the same traced graphs
inductor receives, without minutes of C++ codegen on a CPU); the inductor tests compile
the default model both ways once, in train and eval mode.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import segzoo
from segzoo.compilation import repeated_blocks

from tests.tiny_models import TINY_EOMT, TINY_MASK2FORMER as MASK2FORMER_TINY, TINY_MIT

# two layers in the first stage: regional compilation reuses one graph for both
MIT_TINY = dict(TINY_MIT, backbone_kwargs=dict(TINY_MIT["backbone_kwargs"], depths=[2, 1, 1, 1]))


@pytest.fixture(autouse=True)
def _fresh_dynamo_caches():
    """Each test compiles from scratch: dynamo would otherwise reuse an earlier test's graphs."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _tiny_model(name: str, tiny: dict, **kwargs) -> nn.Module:
    if name.startswith("segformer_mit_"):
        return segzoo.create_model(name, num_classes=3, **MIT_TINY, **kwargs)
    if name.startswith("eomt_"):  # no decoder width: its queries run in the ViT's last blocks
        return segzoo.create_model(name, num_classes=3, **TINY_EOMT, **kwargs)
    extra = MASK2FORMER_TINY if name.startswith("mask2former_") else {}
    return segzoo.create_model(name, num_classes=3, **{**tiny, **extra}, **kwargs)


def _outputs_and_grads(model: nn.Module, x: torch.Tensor, train: bool):
    """Eval: the logits. Train: the loss and every trainable parameter's gradient."""
    model.train(train)
    if not train:
        with torch.no_grad():
            return model(x), {}
    model.zero_grad(set_to_none=True)
    target = torch.randint(0, 3, (x.shape[0], *x.shape[-2:]), generator=torch.Generator().manual_seed(1))
    output = model(x)
    loss = model.compute_loss(output, target) if hasattr(model, "compute_loss") else \
        torch.nn.functional.cross_entropy(output, target)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return loss.detach(), grads


def _assert_matches_eager(model: nn.Module, mode: str, x: torch.Tensor, train: bool, backend: str = "aot_eager",
                          rtol: float = 1e-4, atol: float = 1e-5) -> None:
    eager = copy.deepcopy(model)
    torch.manual_seed(0)
    expected, expected_grads = _outputs_and_grads(eager, x, train)
    segzoo.compile_model(model, mode, backend=backend)
    torch.manual_seed(0)
    got, grads = _outputs_and_grads(model, x, train)
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("name,size", [
    ("segformer_dinov3_base", 48),       # odd token grid: the pyramid's half-resolution level pads
    ("segformer_dinov2_small", 70),      # patch 14, padded input
    ("upernet_dinov3_base", 64),
    ("dpt_dinov3_base", 48),             # odd token grid: DPT's fusion resamples its residuals
    ("mask2former_dinov3_base", 64),
    ("eomt_dinov3_base", 48),            # queries and masked attention through the compiled blocks
    ("segformer_mit_b0", 64),
])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_regional_compile_matches_eager(tiny, name, size, train):
    model = _tiny_model(name, tiny)
    x = torch.randn(2, 3, size, size)
    if name.startswith("mask2former_") and train:
        # the set loss samples random points: same seed, same points, in eager and compiled runs
        model.decode_head.config.train_num_points = 64
    _assert_matches_eager(model, "regional", x, train)
    compiled = [m for m in model.modules() if m._compiled_call_impl is not None]
    blocks = repeated_blocks(model.backbone)
    assert blocks and all(b in compiled for b in blocks)
    assert model.decode_head in compiled and model not in compiled


@pytest.mark.parametrize("name", ["segformer_dinov3_base", "segformer_dinov2_small", "upernet_dinov3_base",
                                  "segformer_mit_b0"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_whole_compile_at_a_fixed_size_matches_eager(tiny, name, train):
    size = 70 if "dinov2" in name else 48 if "dinov3" in name else 64
    # MiT takes any size by design; the ViTs are built for one
    model = _tiny_model(name, tiny) if "mit" in name else _tiny_model(name, tiny, img_size=size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback, no dynamic-size warning
        _assert_matches_eager(model, "whole", torch.randn(2, 3, size, size), train)
    assert model._compiled_call_impl is not None
    assert not any(b._compiled_call_impl is not None for b in repeated_blocks(model.backbone))


def test_eomt_compiles_whole_at_a_fixed_size_for_inference(tiny):
    """Queries, masked attention (a new model masks) and mask module in one graph, as exported."""
    model = _tiny_model("eomt_dinov3_base", tiny, img_size=48)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_matches_eager(model, "whole", torch.randn(2, 3, 48, 48), train=False)
    assert model._compiled_call_impl is not None


@pytest.mark.parametrize("mode", ["whole", "regional"])
def test_default_model_compiles_with_inductor_in_train_and_eval(tiny, mode):
    """The real compiler: ViT + pyramid + SegFormer head in one graph (or regionally), odd token grid."""
    model = _tiny_model("segformer_dinov3_base", tiny, img_size=48)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0  # inductor draws its own random numbers: dropout masks would differ
    x = torch.randn(2, 3, 48, 48)
    eager = copy.deepcopy(model)
    segzoo.compile_model(model, mode)  # inductor, torch's default
    for train in (True, False):
        torch.manual_seed(0)
        expected, expected_grads = _outputs_and_grads(eager, x, train)
        torch.manual_seed(0)
        got, grads = _outputs_and_grads(model, x, train)
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)
        for name in expected_grads:
            torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize("mode", ["regional", "whole"])
def test_state_dict_keys_and_saved_folders_are_unchanged(tiny, tmp_path, mode):
    model = _tiny_model("segformer_dinov3_base", tiny, img_size=32)
    keys = list(model.state_dict())
    segzoo.compile_model(model, mode, backend="aot_eager")
    model(torch.randn(1, 3, 32, 32))
    assert list(model.state_dict()) == keys
    assert not any("_orig_mod" in k for k in model.state_dict())
    segzoo.save_pretrained(model, tmp_path / "saved")
    reloaded = segzoo.create_model(str(tmp_path / "saved"))
    assert list(reloaded.state_dict()) == keys


def test_lora_and_gradient_checkpointing_compile_regionally(tiny):
    model = _tiny_model("segformer_dinov3_base", tiny, lora=dict(r=4))
    with torch.no_grad():  # non-zero adapters, so the LoRA path changes the output
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    model.set_grad_checkpointing(True)
    _assert_matches_eager(model, "regional", torch.randn(2, 3, 48, 48), train=True)
    assert any("lora_A" in n for n, p in model.named_parameters() if p.grad is not None)


def test_uncompile_gives_back_the_eager_model(tiny):
    model = _tiny_model("segformer_dinov3_base", tiny)
    segzoo.compile_model(model, backend="aot_eager")
    assert segzoo.is_compiled(model)
    assert segzoo.uncompile_model(model) is model
    assert not segzoo.is_compiled(model)
    with pytest.warns(UserWarning, match="every new size recompiles"):  # built for any size: said so
        segzoo.compile_model(model, "whole", backend="aot_eager")  # a new mode after undoing the old one
    assert model._compiled_call_impl is not None


def _fails_on_backbone_and_neck_in_one_graph(gm: torch.fx.GraphModule, example_inputs):
    """A backend that crashes like inductor did on torch 2.11: only when attention and the
    pyramid's transposed convolutions meet in one graph."""
    targets = " ".join(str(node.target) for node in gm.graph.nodes)
    if "conv_transpose2d" in targets and "scaled_dot_product_attention" in targets:
        raise AttributeError("'StrictLessThan' object has no attribute 'diff'")
    return gm.forward


def test_whole_graph_failure_falls_back_to_regional_with_one_warning(tiny):
    model = _tiny_model("segformer_dinov3_base", tiny, img_size=48)
    eager = copy.deepcopy(model).eval()
    x = torch.randn(1, 3, 48, 48)
    segzoo.compile_model(model, "whole", backend=_fails_on_backbone_and_neck_in_one_graph)
    model.eval()
    with pytest.warns(UserWarning, match="compiling regionally instead.*StrictLessThan") as caught:
        with torch.no_grad():
            out = model(x)
    assert len([w for w in caught if "regionally" in str(w.message)]) == 1
    torch.testing.assert_close(out, eager(x))
    assert all(b._compiled_call_impl is not None for b in repeated_blocks(model.backbone))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            torch.testing.assert_close(model(x), out)  # no second warning


def test_bad_arguments_are_named(tiny):
    model = _tiny_model("segformer_dinov3_base", tiny)
    with pytest.raises(ValueError, match="mode must be one of"):
        segzoo.compile_model(model, "blocks")
    with pytest.raises(TypeError, match="expects a zoo model"):
        segzoo.compile_model(nn.Linear(2, 2))
    segzoo.compile_model(model, backend="aot_eager")
    with pytest.raises(ValueError, match="already compiled"):
        segzoo.compile_model(model, "whole")


def test_whole_compile_of_a_dynamic_size_vit_warns(tiny):
    model = _tiny_model("segformer_dinov3_base", tiny)
    with pytest.warns(UserWarning, match="every new size recompiles"):
        segzoo.compile_model(model, "whole", backend="aot_eager")


def test_regional_compile_check_sees_every_block_enter_its_compiled_call():
    """benchmarks/check_regional_compile.py, the first thing to run on a new GPU stack: every
    block runs through its compiled call, and one graph serves all blocks."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "benchmarks/check_regional_compile.py", "--backend", "aot_eager",
                             "--steps", "1"], cwd=root, capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(result.stdout)
    assert report["blocks"] == 4 and report["blocks_entered_compiled"] == 4
    assert report["entered"]["neck"] == 2 and report["entered"]["decode_head"] == 2  # two training steps
    assert report["stats"]["unique_graphs"] == 3  # one block graph for all blocks, neck, head
    assert report["graph_breaks"] == 0
    assert report["block_step_s"]["eager"] > 0 and report["block_step_s"]["compiled"] > 0
