"""segzoo's whole EoMT against transformers' ``EomtForUniversalSegmentation`` (DINOv2 with
registers) and ``EomtDinov3ForUniversalSegmentation`` (DINOv3, RoPE): same tiny architecture,
every weight mapped across by an explicit key table, same input.

Compared, within 1e-4 (absolute): the class logits and mask logits of *every* prediction each
model makes, in order: the one from the tokens entering each query block (what drives that
block's attention mask and what deep supervision trains) and the final one. transformers
computes the per-block predictions but returns only the final one, so both sides record the
calls of their prediction function (``EomtForUniversalSegmentation.predict``,
``EomtSegmenter._predict``); the number of calls must match too. Modes:

- eval, masks annealed away (probability 0): the final prediction only (neither side predicts
  before a block that does not mask);
- eval and train at masking probability 1 (every query masked: nothing is drawn);
- train at probability 0 (transformers still builds a mask, all-ones: no draw can keep one);
- train with the first block half annealed: both draw one uniform number per image and query
  for that block, in the same order and with the same rule, so the same seed gives the same
  draws and the same partial masks.

Excluded, by design (see the heads page, "Differences from transformers' EomtForUniversalSegmentation"):

- eval at a probability strictly between 0 and 1: segzoo masks every query there
  (deterministic predictions), transformers draws which queries keep their mask in eval too;
- input sizes other than the configured one: transformers fixes the token grid (and DINOv2's
  position table) from ``config.image_size`` (square), segzoo follows the input. The
  comparison runs at transformers' size, with timm's DINOv2 position table built at that grid
  so that neither side resamples it;
- transformers' EoMT-DINOv3 augments the RoPE coordinates in training
  (``pos_embed_rescale=2.0`` by default, random); timm's DINOv3, and so segzoo, does not
  (timm leaves ``rope_rescale_coords`` out of its interface). The reference is built with the
  augmentation off;
- the token order ([queries, prefix, patches] in transformers, [prefix, patches, queries] in
  segzoo) is internal: only the logits are compared;
- the loss (compared with transformers' ``EomtLoss`` in ``tests/test_eomt.py``), dropout and
  drop path (0 on both sides: their random streams would differ).

The tiny models (4 blocks, the last 2 with 8 queries) have LayerScale gammas around 1, random
norms, biases and prefix tokens, and unit-variance projections, so that a wrong key cannot hide
behind equal initial values; the last test checks that skipping any block, dropping the masks or
drawing other queries moves the logits far beyond the tolerance.

Config choices that are not exclusions: timm's DINOv3 (the published ``vit_*_dinov3``) has no
q/k/v biases and LayerNorm eps 1e-5, so the reference is configured the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn
from transformers import EomtConfig, EomtForUniversalSegmentation
from transformers.models.eomt_dinov3 import EomtDinov3Config, EomtDinov3ForUniversalSegmentation

import segzoo
from segzoo.models import EomtSegmenter

TOLERANCE = 1e-4
WIDTH, HEADS, DEPTH = 64, 2, 4
NUM_CLASSES, NUM_QUERIES, NUM_BLOCKS = 3, 8, 2
GRID = 6  # 6x6 patches: masks of 24x24, enough room for partial masks

# What each family maps: transformers key -> (segzoo key, transform of the segzoo tensor).
KeyMap = dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]]
Prediction = tuple[torch.Tensor, torch.Tensor]  # (mask_logits, class_logits)


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _qkv_part(part: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """timm's fused qkv rows (or bias) are [q; k; v]: transformers holds three projections."""
    return lambda t: t.chunk(3, dim=0)[part]


def _head_keys() -> KeyMap:
    """What EoMT adds to the ViT, the final norm and the two buffers (same on both families)."""
    keys: KeyMap = {
        "query.weight": ("decode_head.query.weight", _same),
        "layernorm.weight": ("backbone.model.norm.weight", _same),
        "layernorm.bias": ("backbone.model.norm.bias", _same),
        "class_predictor.weight": ("decode_head.class_predictor.weight", _same),
        "class_predictor.bias": ("decode_head.class_predictor.bias", _same),
        "attn_mask_probs": ("decode_head.attn_mask_probs", _same),
        "criterion.empty_weight": ("decode_head.criterion.empty_weight", _same),
        "embeddings.cls_token": ("backbone.model.cls_token", _same),
        "embeddings.register_tokens": ("backbone.model.reg_token", _same),
    }
    for fc in ("fc1", "fc2", "fc3"):
        for leaf in ("weight", "bias"):
            keys[f"mask_head.{fc}.{leaf}"] = (f"decode_head.mask_head.{fc}.{leaf}", _same)
    for j in range(2):  # num_upscale_blocks
        for leaf in ("conv1.weight", "conv1.bias", "conv2.weight", "layernorm2d.weight", "layernorm2d.bias"):
            keys[f"upscale_block.block.{j}.{leaf}"] = (f"decode_head.upscale_block.block.{j}.{leaf}", _same)
    return keys


def _dinov3_keys() -> KeyMap:
    """timm's ``Eva`` (DINOv3 arguments) -> transformers' DINOv3 layers. No q/k/v biases in timm's DINOv3."""
    keys = _head_keys()
    keys["embeddings.patch_embeddings.weight"] = ("backbone.model.patch_embed.proj.weight", _same)
    keys["embeddings.patch_embeddings.bias"] = ("backbone.model.patch_embed.proj.bias", _same)
    for i in range(DEPTH):
        ours, theirs = f"backbone.model.blocks.{i}", f"layers.{i}"
        for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
            keys[f"{theirs}.attention.{name}.weight"] = (f"{ours}.attn.qkv.weight", _qkv_part(part))
        for leaf in ("weight", "bias"):
            keys[f"{theirs}.norm1.{leaf}"] = (f"{ours}.norm1.{leaf}", _same)
            keys[f"{theirs}.norm2.{leaf}"] = (f"{ours}.norm2.{leaf}", _same)
            keys[f"{theirs}.attention.o_proj.{leaf}"] = (f"{ours}.attn.proj.{leaf}", _same)
            keys[f"{theirs}.mlp.up_proj.{leaf}"] = (f"{ours}.mlp.fc1.{leaf}", _same)
            keys[f"{theirs}.mlp.down_proj.{leaf}"] = (f"{ours}.mlp.fc2.{leaf}", _same)
        keys[f"{theirs}.layer_scale1.lambda1"] = (f"{ours}.gamma_1", _same)
        keys[f"{theirs}.layer_scale2.lambda1"] = (f"{ours}.gamma_2", _same)
    return keys


def _dinov2_keys() -> KeyMap:
    """timm's ``VisionTransformer`` (DINOv2 with registers) -> transformers' EoMT layers."""
    keys = _head_keys()
    keys["embeddings.patch_embeddings.projection.weight"] = ("backbone.model.patch_embed.proj.weight", _same)
    keys["embeddings.patch_embeddings.projection.bias"] = ("backbone.model.patch_embed.proj.bias", _same)
    # registers variant: no position for the prefix tokens (timm's no_embed_class), one row per patch
    keys["embeddings.position_embeddings.weight"] = ("backbone.model.pos_embed", lambda t: t[0])
    for i in range(DEPTH):
        ours, theirs = f"backbone.model.blocks.{i}", f"layers.{i}"
        for leaf in ("weight", "bias"):
            for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
                keys[f"{theirs}.attention.{name}.{leaf}"] = (f"{ours}.attn.qkv.{leaf}", _qkv_part(part))
            keys[f"{theirs}.norm1.{leaf}"] = (f"{ours}.norm1.{leaf}", _same)
            keys[f"{theirs}.norm2.{leaf}"] = (f"{ours}.norm2.{leaf}", _same)
            keys[f"{theirs}.attention.out_proj.{leaf}"] = (f"{ours}.attn.proj.{leaf}", _same)
            keys[f"{theirs}.mlp.fc1.{leaf}"] = (f"{ours}.mlp.fc1.{leaf}", _same)
            keys[f"{theirs}.mlp.fc2.{leaf}"] = (f"{ours}.mlp.fc2.{leaf}", _same)
        keys[f"{theirs}.layer_scale1.lambda1"] = (f"{ours}.ls1.gamma", _same)
        keys[f"{theirs}.layer_scale2.lambda1"] = (f"{ours}.ls2.gamma", _same)
    return keys


@dataclass(frozen=True)
class Family:
    model_name: str
    patch_size: int
    keys: Callable[[], KeyMap]
    reference: Callable[[], nn.Module]


def _dinov3_reference() -> nn.Module:
    config = EomtDinov3Config(
        hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=4 * WIDTH,
        num_labels=NUM_CLASSES, num_queries=NUM_QUERIES, num_blocks=NUM_BLOCKS, num_register_tokens=4,
        patch_size=16, image_size=16 * GRID, layer_norm_eps=1e-5,
        query_bias=False, key_bias=False, value_bias=False,  # timm's DINOv3 has none
        pos_embed_rescale=None,  # no random RoPE augmentation in training (timm has none)
    )
    return EomtDinov3ForUniversalSegmentation(config)


def _dinov2_reference() -> nn.Module:
    config = EomtConfig(
        hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS, mlp_ratio=4,
        num_labels=NUM_CLASSES, num_queries=NUM_QUERIES, num_blocks=NUM_BLOCKS, num_register_tokens=4,
        patch_size=14, image_size=14 * GRID, layer_norm_eps=1e-6,
    )
    return EomtForUniversalSegmentation(config)


FAMILIES = {
    "dinov3": Family("eomt_dinov3_base", 16, _dinov3_keys, _dinov3_reference),
    "dinov2_reg4": Family("eomt_dinov2_reg4_small", 14, _dinov2_keys, _dinov2_reference),
}


def _segzoo_model(family: Family) -> EomtSegmenter:
    backbone_kwargs: dict[str, Any] = dict(depth=DEPTH, embed_dim=WIDTH, num_heads=HEADS, init_values=1.0)
    if family.model_name.startswith("eomt_dinov2"):
        # timm's position table at transformers' grid: no resampling on either side
        backbone_kwargs["img_size"] = family.patch_size * GRID
    model = segzoo.create_model(family.model_name, num_classes=NUM_CLASSES, backbone_kwargs=backbone_kwargs,
                                num_queries=NUM_QUERIES, num_blocks=NUM_BLOCKS)
    with torch.no_grad():
        # random norms, biases, LayerScale gammas and prefix tokens: a key mapped to the wrong
        # place (ls1 <-> ls2, norm1 <-> norm2, a register token) cannot hide behind equal inits
        for name, param in model.named_parameters():
            if param.ndim == 1 or name.endswith(("cls_token", "reg_token")):
                param.add_(0.1 * torch.randn_like(param))
            elif ".blocks." in name:
                # unit-variance projections instead of timm's std 0.02: attention that is far from
                # uniform, so which patches a query may see (the mask) changes what it reads
                nn.init.normal_(param, std=param.shape[1] ** -0.5)
    return model


def _mapped_state_dict(model: EomtSegmenter, reference: nn.Module, keys: KeyMap) -> dict[str, torch.Tensor]:
    """transformers' state dict from segzoo's through ``keys``; fails on any key left over on either side."""
    ours = model.state_dict()
    theirs = reference.state_dict()
    unmapped_theirs = sorted(set(theirs) - set(keys))
    unknown = sorted(set(keys) - set(theirs))
    unused_ours = sorted(set(ours) - {source for source, _ in keys.values()})
    assert not unmapped_theirs and not unknown and not unused_ours, (
        f"transformers keys without a source: {unmapped_theirs}; mapped keys transformers lacks: {unknown}; "
        f"segzoo keys mapped nowhere: {unused_ours}"
    )
    mapped = {key: transform(ours[source]).clone() for key, (source, transform) in keys.items()}
    for key, value in mapped.items():
        assert value.shape == theirs[key].shape, (
            f"{key}: {tuple(value.shape)} from segzoo, {tuple(theirs[key].shape)} in transformers")
    return mapped


def _load_reference(model: EomtSegmenter, reference: nn.Module, keys: KeyMap) -> None:
    result = reference.load_state_dict(_mapped_state_dict(model, reference, keys), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@contextmanager
def _recorded(owner: nn.Module, method: str) -> Iterator[list[Prediction]]:
    """Every (mask_logits, class_logits) the owner's prediction function returns while inside."""
    calls: list[Prediction] = []
    original = getattr(owner, method)

    def record(*args: Any, **kwargs: Any) -> Prediction:
        masks, classes = original(*args, **kwargs)
        calls.append((masks, classes))
        return masks, classes

    setattr(owner, method, record)  # an instance attribute shadows the method
    try:
        yield calls
    finally:
        delattr(owner, method)


def _both_predictions(model: EomtSegmenter, reference: nn.Module, x: torch.Tensor, training: bool,
                      seed: int = 0) -> tuple[list[Prediction], list[Prediction]]:
    """Every prediction of each model on ``x``, the same seed before each (same mask draws)."""
    model.train(training)
    reference.train(training)
    with torch.no_grad():
        with _recorded(model, "_predict") as ours:
            torch.manual_seed(seed)
            model(x)
        with _recorded(reference, "predict") as theirs:
            torch.manual_seed(seed)
            reference(pixel_values=x)
    return ours, theirs


def _max_differences(ours: list[Prediction], theirs: list[Prediction]) -> list[tuple[float, float]]:
    return [((m - tm).abs().max().item(), (c - tc).abs().max().item()) for (m, c), (tm, tc) in zip(ours, theirs)]


def _image(family: Family, batch: int, seed: int) -> torch.Tensor:
    """An input of transformers' configured size (its token grid is fixed)."""
    size = family.patch_size * GRID
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=list(FAMILIES), ids=list(FAMILIES))
def pair(request: pytest.FixtureRequest) -> tuple[Family, EomtSegmenter, nn.Module]:
    family = FAMILIES[request.param]
    torch.manual_seed(0)
    model = _segzoo_model(family)
    reference = family.reference()
    _load_reference(model, reference, family.keys())
    return family, model, reference


# (training, annealing progress, expected masking probability per query block)
MODES = {
    "eval-annealed": (False, 1.0, [0.0, 0.0]),
    "eval-masked": (False, 0.0, [1.0, 1.0]),
    "train-annealed": (True, 1.0, [0.0, 0.0]),
    "train-masked": (True, 0.0, [1.0, 1.0]),
    "train-first-block-half-annealed": (True, 0.375, [0.5 ** 0.9, 1.0]),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_prediction_matches_transformers(pair: tuple[Family, EomtSegmenter, nn.Module],
                                               mode: str) -> None:
    family, model, reference = pair
    training, progress, probabilities = MODES[mode]
    model.set_mask_annealing(progress)
    assert model.mask_probabilities == pytest.approx(probabilities)
    _load_reference(model, reference, family.keys())  # the annealing state travels with the weights
    x = _image(family, 2, seed=1)
    ours, theirs = _both_predictions(model, reference, x, training)
    # one prediction before each block that masks (or is deep-supervised in training), one at the end
    expected_calls = 1 if (not training and max(probabilities) == 0) else NUM_BLOCKS + 1
    assert len(ours) == len(theirs) == expected_calls
    differences = _max_differences(ours, theirs)
    print(f"{family.model_name} {mode}: max |diff| (masks, classes) per prediction: "
          + ", ".join(f"({m:.2e}, {c:.2e})" for m, c in differences))
    for index, ((masks, classes), (ref_masks, ref_classes)) in enumerate(zip(ours, theirs)):
        assert masks.shape == ref_masks.shape == (2, NUM_QUERIES, 4 * GRID, 4 * GRID)
        assert classes.shape == ref_classes.shape == (2, NUM_QUERIES, NUM_CLASSES + 1)
        torch.testing.assert_close(masks, ref_masks, atol=TOLERANCE, rtol=0, msg=lambda m: f"prediction {index}: {m}")
        torch.testing.assert_close(classes, ref_classes, atol=TOLERANCE, rtol=0,
                                   msg=lambda m: f"prediction {index}: {m}")


def test_the_tiny_models_make_every_block_the_masks_and_the_draws_matter(
        pair: tuple[Family, EomtSegmenter, nn.Module]) -> None:
    """The tolerance means something only if the tiny models are sensitive: skipping any one
    block, dropping the masks (all, or the first query block's) or drawing other queries in
    the half-annealed block must each move the final logits far beyond it."""
    family, model, _ = pair
    x = _image(family, 1, seed=2)

    def final_masks(progress: float, training: bool = False, seed: int = 0) -> torch.Tensor:
        model.set_mask_annealing(progress)
        model.train(training)
        torch.manual_seed(seed)
        with torch.no_grad(), _recorded(model, "_predict") as calls:
            model(x)
        return calls[-1][0]

    def moved(changed: torch.Tensor, reference: torch.Tensor) -> float:
        return (changed - reference).abs().max().item()

    masked = final_masks(0.0)
    skipped_moves = []
    for index, block in enumerate(model.backbone.model.blocks):
        # LayerScale gammas of 0: the block adds nothing to the residual stream, i.e. it is the identity
        gammas = [p for name, p in block.named_parameters() if "gamma" in name]
        assert len(gammas) == 2
        saved = [g.detach().clone() for g in gammas]
        with torch.no_grad():
            for gamma in gammas:
                gamma.zero_()
        try:
            skipped = moved(final_masks(0.0), masked)
        finally:
            with torch.no_grad():
                for gamma, value in zip(gammas, saved):
                    gamma.copy_(value)
        skipped_moves.append(skipped)
    without_masks = moved(final_masks(1.0), masked)
    without_first = moved(final_masks(0.5), masked)  # 2 query blocks at progress 0.5: [0, 1]
    other_draws = moved(final_masks(0.375, training=True, seed=1), final_masks(0.375, training=True, seed=0))
    print(f"{family.model_name}: final masks move by " + ", ".join(f"{m:.2e}" for m in skipped_moves)
          + f" skipping block 0..{DEPTH - 1}, {without_masks:.2e} without masks, {without_first:.2e} without the "
          f"first block's, {other_draws:.2e} with other draws")
    assert min(*skipped_moves, without_masks, without_first, other_draws) > 100 * TOLERANCE
