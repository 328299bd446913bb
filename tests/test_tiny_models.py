"""The tiny test models let parity checks see every block and every feature level.

A parity test compares outputs within ``rtol=1e-4, atol=1e-5``; it can only catch a wrong block or
a swapped level if that change moves the output far outside the tolerance. These tests make
those changes on purpose, for every backbone family and every multi-level head, and require
the output to move by at least 10x that tolerance. Mask2Former is measured on its mask logits
(what its parity tests compare): its eval output, log-probabilities of a fresh model close to
uniform, compresses every change.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import segzoo
from segzoo.backbones import BACKBONES, default_feature_indices

from tests.tiny_models import TINY_MASK2FORMER, TINY_VIT, TINY_WIDTH, tiny_vit

RTOL, ATOL = 1e-4, 1e-5  # the parity tests' tolerance
MIN_EFFECT = 10.0  # in units of that tolerance


class _PassThrough(nn.Module):
    """A block that returns its input (timm's blocks take extra arguments such as ``rope``)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # Mask2Former, EoMT: per-query mask logits in train mode (the registry says which heads predict sets)
    set_outputs = segzoo.model_entry(model.model_name).head.set_prediction
    with torch.no_grad():
        out = model.train(set_outputs)(x)
    return out["masks_queries_logits"] if set_outputs else out


def _change_in_tolerances(model: nn.Module, x: torch.Tensor, mutate) -> float:
    """How far ``mutate`` moves the output, in multiples of the parity tolerance (worst element)."""
    before = _logits(model, x)
    mutate(model)
    after = _logits(model, x)
    return ((after - before).abs() / (ATOL + RTOL * before.abs())).max().item()


def _swap_levels(first: int, second: int):
    """Hand the head feature level ``second`` where it expects ``first`` and vice versa."""
    def mutate(model: nn.Module) -> None:
        gather = model.backbone._gather
        gather[first], gather[second] = gather[second], gather[first]
    return mutate


def test_four_blocks_give_four_distinct_feature_levels():
    assert default_feature_indices(TINY_VIT["depth"]) == [0, 1, 2, 3]


@pytest.mark.parametrize("backbone", sorted(name for name, spec in BACKBONES.items() if spec.kind == "vit"))
def test_every_block_and_level_moves_the_output_far_outside_the_tolerance(backbone):
    """Replacing each block with the identity, or swapping two neighbouring levels, changes SegFormer's logits."""
    name = f"segformer_{backbone}"
    make = lambda: segzoo.create_model(name, num_classes=3, backbone_kwargs=tiny_vit(name),  # noqa: E731
                                       decoder_hidden_size=TINY_WIDTH)
    patch = BACKBONES[backbone].patch_size
    x = torch.randn(1, 3, 4 * patch, 4 * patch)
    for block in range(TINY_VIT["depth"]):
        torch.manual_seed(0)
        model = make()

        def identity_block(m: nn.Module, block=block) -> None:
            m.backbone.model.blocks[block] = _PassThrough()
        effect = _change_in_tolerances(model, x, identity_block)
        assert effect > MIN_EFFECT, f"{name}: block {block} as identity moved the logits by only {effect:.1f} tolerances"
    for level in range(3):
        torch.manual_seed(0)
        effect = _change_in_tolerances(make(), x, _swap_levels(level, level + 1))
        assert effect > MIN_EFFECT, f"{name}: swapping levels {level} and {level + 1} moved them by only {effect:.1f} tolerances"


@pytest.mark.parametrize("head", ["upernet", "dpt", "mask2former"])
def test_multi_level_heads_see_every_level_swap(head):
    name = f"{head}_dinov3_small"
    extra = TINY_MASK2FORMER if head == "mask2former" else {}
    x = torch.randn(1, 3, 64, 64)
    for level in range(3):
        torch.manual_seed(0)
        model = segzoo.create_model(name, num_classes=3, backbone_kwargs=dict(TINY_VIT), decoder_hidden_size=TINY_WIDTH,
                                    **extra)
        effect = _change_in_tolerances(model, x, _swap_levels(level, level + 1))
        print(f"{name}: levels {level}<->{level + 1}: {effect:.0f} tolerances")
        assert effect > MIN_EFFECT, f"{name}: swapping levels {level} and {level + 1} moved the logits by only {effect:.1f} tolerances"


def test_a_family_without_layer_scale_refuses_init_values():
    with pytest.raises(ValueError, match="retfound_large's ViT .* has no LayerScale.*remove init_values"):
        segzoo.create_model("segformer_retfound_large", num_classes=2, backbone_kwargs=dict(TINY_VIT))
