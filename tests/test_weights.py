"""checkpoint_path: original published layouts, written from a tiny source model with the
key names the real files use, must load to the same features; bad files fail clearly."""

from __future__ import annotations

import os
import re

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

import segzoo
from tests.tiny_models import TINY_VIT, tiny_kwargs, tiny_vit
from tests.checkpoint_layouts import dino_teacher, mae_checkpoint, meta_dinov2, meta_dinov3, source_vit


def _features(source: torch.nn.Module, feature_indices: list[int], x: torch.Tensor) -> list[torch.Tensor]:
    """The source ViT's output of each block in ``feature_indices``, one timm call per block."""
    return [source.forward_intermediates(x, indices=[i], intermediates_only=True, output_fmt="NCHW")[0]
            for i in feature_indices]


LAYOUTS = {
    # id: (model name, backbone, writer(state, source) -> checkpoint, file suffix, detected format)
    "dinov2_meta": ("segformer_dinov2_base", "dinov2_base", lambda s, m: meta_dinov2(s), ".pth", "dinov2"),
    "dinov2_reg4_meta": (
        "segformer_dinov2_reg4_small", "dinov2_reg4_small", lambda s, m: meta_dinov2(s, registers=True), ".pth", "dinov2",
    ),
    "dinov2_giant_swiglu_meta": (
        "segformer_dinov2_giant", "dinov2_giant", lambda s, m: meta_dinov2(s, swiglu=True), ".pth", "dinov2",
    ),
    "dinov3_meta": ("segformer_dinov3_large", "dinov3_large", lambda s, m: meta_dinov3(s, 2), ".pth", "dinov3"),
    "retfound_mae": ("segformer_retfound_large", "retfound_large", lambda s, m: mae_checkpoint(s), ".pth", "mae"),
    "retfound_dinov2": (
        "segformer_retfound_dinov2_large", "retfound_dinov2_large", lambda s, m: dino_teacher(meta_dinov2(s)),
        ".pth", "dino_teacher",
    ),
    "visionfm": ("segformer_visionfm_base", "visionfm_base", lambda s, m: dino_teacher(s, ibot=True), ".pth", "dino_teacher"),
    "visionfm_ddp_prefix": (
        "segformer_visionfm_base", "visionfm_base", lambda s, m: dino_teacher(s, prefix="module.backbone."),
        ".pth", "dino_teacher",
    ),
    "timm_safetensors": ("segformer_dinov3_small", "dinov3_small", lambda s, m: s, ".safetensors", "timm"),
    "timm_ddp_training_pth": (
        "segformer_dinov2_small", "dinov2_small",
        lambda s, m: {"state_dict": {"module." + k: v for k, v in s.items()}, "epoch": 3}, ".pth", "timm",
    ),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_original_layout_loads_to_the_source_models_features(layout, tiny, tmp_path, capsys):
    name, backbone, write, suffix, fmt = LAYOUTS[layout]
    size = {}
    if "giant" in name:  # ViT-g's SwiGLU needs an even hidden width: 48 * 2.67 = 128
        size = dict(embed_dim=48)
    tiny = dict(tiny, backbone_kwargs=dict(tiny_vit(name), **size))
    source = source_vit(backbone, **size)
    checkpoint = write(source.state_dict(), source)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in checkpoint.items()}, str(path))
    else:
        torch.save(checkpoint, path)

    model = segzoo.create_model(name, num_classes=2, checkpoint_path=str(path), **tiny).eval()

    report = capsys.readouterr().out
    assert f"({fmt})" in report and "0 missing, 0 unexpected" in report
    assert re.search(r"[1-9]\d* unused by segmentation", report)  # the final norm at least
    x = torch.randn(1, 3, 3 * model.patch_size, 4 * model.patch_size)
    with torch.no_grad():
        got, want = model.backbone(x), _features(source, model.backbone.feature_indices, x)
    assert len(got) == len(want) == 4
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    assert "checkpoint_path" not in model.model_kwargs  # config.json rebuilds the architecture only


def test_blocks_past_the_last_feature_index_count_as_unused(tmp_path, capsys):
    source = source_vit("dinov2_base", depth=4)
    torch.save(meta_dinov2(source.state_dict()), tmp_path / "w.pth")
    model = segzoo.create_model(
        "segformer_dinov2_base", num_classes=2, checkpoint_path=tmp_path / "w.pth", feature_indices=[0, 0, 1, 1],
        backbone_kwargs=dict(TINY_VIT), decoder_hidden_size=32,
    )
    report = capsys.readouterr().out
    assert model.backbone.depth == 2
    # blocks 2 and 3 (14 tensors each) + final norm (2): pruned by design, not errors
    pruned = [k for k in source.state_dict() if k.startswith(("blocks.2.", "blocks.3.", "norm."))]
    assert len(pruned) == 30
    assert "0 missing, 0 unexpected, 30 unused by segmentation, 1 pre-training only dropped" in report


def test_missing_backbone_weights_are_named(tiny, tmp_path):
    state = source_vit("visionfm_base").state_dict()
    del state["blocks.1.attn.qkv.weight"]
    torch.save(dino_teacher(state), tmp_path / "w.pth")
    with pytest.raises(segzoo.CheckpointError, match=r"partial load.*1 model weights missing.*blocks\.1\.attn\.qkv\.weight"):
        segzoo.create_model("segformer_visionfm_base", num_classes=2, checkpoint_path=tmp_path / "w.pth",
                            **tiny_kwargs("segformer_visionfm_base"))


def test_wrong_size_is_a_shape_mismatch_naming_keys(tiny, tmp_path):
    torch.save(mae_checkpoint(source_vit("retfound_large", embed_dim=96, num_heads=2).state_dict()), tmp_path / "w.pth")
    with pytest.raises(segzoo.CheckpointError, match=r"shape mismatches: .*checkpoint \(1, 1, 96\) vs model \(1, 1, 64\)"):
        segzoo.create_model("segformer_retfound_large", num_classes=2, checkpoint_path=tmp_path / "w.pth",
                            **tiny_kwargs("segformer_retfound_large"))


def test_deeper_checkpoint_than_model_is_unexpected(tiny, tmp_path):
    torch.save(meta_dinov3(source_vit("dinov3_base", depth=5).state_dict(), 2), tmp_path / "w.pth")
    with pytest.raises(segzoo.CheckpointError, match=r"has no place for: blocks\.4\."):
        segzoo.create_model("segformer_dinov3_base", num_classes=2, checkpoint_path=tmp_path / "w.pth", **tiny)


def test_nonzero_dinov3_qkv_bias_is_not_dropped_silently(tiny, tmp_path):
    checkpoint = meta_dinov3(source_vit("dinov3_base").state_dict(), 2)
    checkpoint["blocks.0.attn.qkv.bias"] += 1.0
    torch.save(checkpoint, tmp_path / "w.pth")
    with pytest.raises(segzoo.CheckpointError, match="qkv.bias is non-zero"):
        segzoo.create_model("segformer_dinov3_base", num_classes=2, checkpoint_path=tmp_path / "w.pth", **tiny)


def test_one_channel_model_adapts_rgb_patch_filters(tiny, tmp_path, capsys):
    source = source_vit("dinov3_base")
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    model = segzoo.create_model("segformer_dinov3_base", num_classes=2, in_chans=1, checkpoint_path=tmp_path / "w.safetensors", **tiny)
    assert "adapted to in_chans: patch_embed.proj.weight 3 -> 1" in capsys.readouterr().out
    rgb = source.patch_embed.proj.weight
    torch.testing.assert_close(model.backbone.model.patch_embed.proj.weight, rgb.sum(dim=1, keepdim=True))


def test_retfound_pos_embed_is_interpolated_to_the_model_grid(tiny, tmp_path):
    source = source_vit("retfound_large", img_size=112)  # a 7x7 grid; the zoo model uses 224 -> 14x14
    torch.save(mae_checkpoint(source.state_dict()), tmp_path / "w.pth")
    model = segzoo.create_model("segformer_retfound_large", num_classes=2, checkpoint_path=tmp_path / "w.pth",
                            **tiny_kwargs("segformer_retfound_large"))
    want = resample_abs_pos_embed(source.pos_embed.detach(), new_size=(14, 14), num_prefix_tokens=1)
    assert model.backbone.model.pos_embed.shape == (1, 197, 64)
    torch.testing.assert_close(model.backbone.model.pos_embed.detach(), want)


def test_code_running_pickle_is_refused_and_never_runs(tiny, tmp_path):
    marker = tmp_path / "the_payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.pth"
    torch.save({"model": source_vit("retfound_large").state_dict(), "extra": Payload()}, path)
    with pytest.raises(segzoo.UnsafeCheckpointError, match=r"refused to load .*evil\.pth.*posix\.mkdir.*weights_only=True"):
        segzoo.create_model("segformer_retfound_large", num_classes=2, checkpoint_path=path,
                            **tiny_kwargs("segformer_retfound_large"))
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load does run it
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_error_names_the_file(tiny, tmp_path, suffix):
    state = source_vit("dinov3_base").state_dict()
    path = tmp_path / f"weights{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(segzoo.CheckpointError, match=rf"{re.escape(str(path))}.*truncated"):
        segzoo.create_model("segformer_dinov3_base", num_classes=2, checkpoint_path=path, **tiny)


def test_missing_file_and_both_weight_sources_are_refused(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        segzoo.create_model("segformer_dinov3_base", num_classes=2, checkpoint_path=tmp_path / "nope.pth", **tiny)
    with pytest.raises(ValueError, match="either pretrained=True .* or checkpoint_path"):
        segzoo.create_model("segformer_dinov3_base", pretrained=True, num_classes=2, checkpoint_path="x.pth", **tiny)


def test_unknown_checkpoint_format_lists_the_known_ones(tiny, tmp_path):
    save_file(source_vit("dinov3_base").state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="unknown checkpoint_format 'meta'.*dino_teacher"):
        segzoo.create_model("segformer_dinov3_base", num_classes=2, checkpoint_path=tmp_path / "w.safetensors",
                            checkpoint_format="meta", **tiny)
