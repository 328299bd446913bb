"""compute_loss on every head: nnU-Net's loss for the per-pixel heads, the Hungarian set loss
for Mask2Former and EoMT, ignored pixels left out of everything, bad targets refused, and one
training loop that trains all five heads."""

from __future__ import annotations

import pytest
import torch

import segzoo
from segzoo.heads.mask2former import label_map_to_mask_targets
from segzoo.losses import dice_ce_loss
from tests.tiny_models import TINY, TINY_EOMT, TINY_MASK2FORMER

IGNORE = 255
# one tiny model per head; patch 16 (DINOv3) so that 64 px needs no padding
MODELS = {
    "segformer": ("segformer_dinov3_small", TINY),
    "upernet": ("upernet_dinov3_small", TINY),
    "dpt": ("dpt_dinov3_small", TINY),
    "mask2former": ("mask2former_dinov3_small", {**TINY, **TINY_MASK2FORMER, "train_num_points": 256}),
    "eomt": ("eomt_dinov3_small", TINY_EOMT),
}
SET_HEADS = ["mask2former", "eomt"]


def _create(head: str) -> torch.nn.Module:
    torch.manual_seed(0)
    name, kwargs = MODELS[head]
    return segzoo.create_model(name, num_classes=3, **kwargs)


def _batch(ignored_columns: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 64 px images; classes 1 and 2 in the left half, the last ``ignored_columns`` ignored."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[:, 10:30, 5:25] = 1
    target[1, 40:, :20] = 2
    if ignored_columns:
        target[:, :, 64 - ignored_columns:] = IGNORE
    return x, target


def _loss(model, outputs, target, seed: int = 1, **kwargs) -> torch.Tensor:
    torch.manual_seed(seed)  # the set loss draws its points at random: the same draw for both calls
    return model.compute_loss(outputs, target, **kwargs)


# -- per-pixel heads: nnU-Net's DC_and_CE_loss ------------------------------------------------


@pytest.mark.parametrize("dice_class", ["MemoryEfficientSoftDiceLoss", "SoftDiceLoss"])
@pytest.mark.parametrize("ignore_label", [None, 4])
@pytest.mark.parametrize("weighted", [False, True])
def test_dice_ce_loss_equals_nnunets_dc_and_ce_loss(dice_class, ignore_label, weighted):
    pytest.importorskip("nnunetv2")
    from nnunetv2.training.loss import dice
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 16, 20, generator=generator, requires_grad=True)
    target = torch.randint(0, 4, (3, 1, 16, 20), generator=generator)
    if ignore_label is not None:
        target[:, :, :5] = ignore_label
        target[0, :, 8:12, 5:9] = ignore_label
    weights = torch.tensor([0.5, 1.0, 2.0, 3.0]) if weighted else None
    # nnU-Net's trainer settings (nnUNetTrainer._build_loss) with batch Dice, its 2D plans' setting
    reference = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False},
                               {} if weights is None else {"weight": weights}, weight_ce=1, weight_dice=1,
                               ignore_label=ignore_label, dice_class=getattr(dice, dice_class))
    expected = reference(logits, target)
    expected_grad, = torch.autograd.grad(expected, logits)
    got = dice_ce_loss(logits, target, ignore_index=ignore_label, class_weights=weights)
    got_grad, = torch.autograd.grad(got, logits)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-9)


def test_per_pixel_compute_loss_is_dice_ce_with_its_options():
    model = _create("segformer").train()
    x, target = _batch()
    logits = model(x)
    assert torch.equal(model.compute_loss(logits, target), dice_ce_loss(logits, target, ignore_index=IGNORE))
    weights = torch.tensor([0.2, 1.0, 3.0])
    weighted = model.compute_loss(logits, target[:, None], class_weights=weights, weight_dice=0.0)
    valid = target != IGNORE
    per_pixel = torch.nn.functional.cross_entropy(logits, torch.where(valid, target, 0), reduction="none")
    expected = (weights[target[valid]] * per_pixel[valid]).sum() / weights[target[valid]].sum()
    torch.testing.assert_close(weighted, expected)
    everything_ignored = model.compute_loss(logits, torch.full_like(target, IGNORE))
    assert everything_ignored.item() == pytest.approx(-1.0)  # Dice of empty sets, no cross-entropy
    assert torch.autograd.grad(everything_ignored, logits)[0].abs().max() == 0


# -- ignored pixels change nothing, on every head --------------------------------------------


def _with_ignored_region_changed(outputs, first_column: int):
    """The outputs with new, large values from ``first_column`` on: logits (per-pixel) or every
    prediction's mask logits (set heads), all at 64 px / stride 1 or 16 px / stride 4."""
    if isinstance(outputs, torch.Tensor):
        changed = outputs.clone()
        changed[..., first_column:] = 50 * torch.randn_like(changed[..., first_column:])
        return changed
    changed = dict(outputs)
    masks = outputs["masks_queries_logits"].clone()
    masks[..., first_column:] = 50 * torch.randn_like(masks[..., first_column:])
    changed["masks_queries_logits"] = masks
    if "auxiliary_outputs" in outputs:
        changed["auxiliary_outputs"] = [_with_ignored_region_changed(o, first_column)
                                        for o in outputs["auxiliary_outputs"]]
    return changed


@pytest.mark.parametrize("head", sorted(MODELS))
def test_logits_at_ignored_pixels_change_neither_loss_nor_matching(head):
    model = _create(head).train()
    x, target = _batch()
    with torch.no_grad():
        outputs = model(x)
    set_head = head in SET_HEADS
    # columns 32.. are ignored. Set heads predict masks at stride 4 (16 columns), which the loss
    # reads bilinearly: mask column 8 still reaches valid pixels, columns 10.. reach ignored ones only
    changed = _with_ignored_region_changed(outputs, 10 if set_head else 32)
    assert _loss(model, changed, target).item() == _loss(model, outputs, target).item()
    # the test can fail: the same change where those pixels are labelled moves the loss
    labelled = torch.where(target == IGNORE, 0, target)
    assert _loss(model, changed, labelled).item() != pytest.approx(_loss(model, outputs, labelled).item(), rel=1e-3)
    if not set_head:
        return
    matcher, valid = model.decode_head.criterion.matcher, (target != IGNORE).float()
    mask_labels, class_labels = label_map_to_mask_targets(target, 3)
    for before, after in zip([outputs, *outputs["auxiliary_outputs"]], [changed, *changed["auxiliary_outputs"]]):
        torch.manual_seed(2)
        expected = matcher(before["masks_queries_logits"], before["class_queries_logits"], mask_labels, class_labels,
                           valid)
        torch.manual_seed(2)
        got = matcher(after["masks_queries_logits"], after["class_queries_logits"], mask_labels, class_labels, valid)
        assert all(torch.equal(a, b) for pair_a, pair_b in zip(got, expected) for a, b in zip(pair_a, pair_b))


@pytest.mark.parametrize("head", SET_HEADS)
def test_without_ignored_pixels_the_set_loss_is_transformers(head):
    # loss_components without a valid map is transformers' loss (tests/test_mask2former.py, test_eomt.py)
    model = _create(head).train()
    x, target = _batch(ignored_columns=0)
    with torch.no_grad():
        outputs = model(x)
    mask_labels, class_labels = label_map_to_mask_targets(target, 3)
    torch.manual_seed(3)
    plain = model.decode_head.loss_components(outputs, mask_labels, class_labels)
    torch.manual_seed(3)
    with_map = model.decode_head.loss_components(outputs, mask_labels, class_labels, torch.ones(2, 64, 64))
    assert plain.keys() == with_map.keys() and len(plain) == 9  # 3 terms x (final + 2 earlier predictions)
    for name in plain:
        torch.testing.assert_close(with_map[name], plain[name], rtol=1e-6, atol=0, msg=name)


@pytest.mark.parametrize("head", SET_HEADS)
def test_a_fully_ignored_batch_trains_only_no_object(head):
    model = _create(head).train()
    x, target = _batch()
    outputs = model(x)
    loss = _loss(model, outputs, torch.full_like(target, IGNORE))
    assert torch.isfinite(loss)
    masks_grad = torch.autograd.grad(loss, outputs["masks_queries_logits"], retain_graph=True)[0]
    assert masks_grad.abs().max() == 0
    assert torch.autograd.grad(loss, outputs["class_queries_logits"])[0].abs().max() > 0


# -- targets and outputs checked, on every head ----------------------------------------------


@pytest.mark.parametrize("head", sorted(MODELS))
def test_bad_targets_are_refused_naming_the_values(head):
    model = _create(head).train()
    x, target = _batch()
    outputs = model(x)
    bad = target.clone()
    bad[0, 0, :3] = torch.tensor([7, -2, 9])
    with pytest.raises(ValueError, match=r"target holds -2, 7, 9: neither class ids in \[0, 2\] .*ignore_index=255"):
        model.compute_loss(outputs, bad)
    with pytest.raises(ValueError, match=r"target holds 255: .*\(ignore_index=None\)"):
        model.compute_loss(outputs, target, ignore_index=None)
    with pytest.raises(ValueError, match="ignore_index=2 is a class id for num_classes=3"):
        model.compute_loss(outputs, target, ignore_index=2)
    with pytest.raises(TypeError, match=r"integer tensor.*target.long\(\)"):
        model.compute_loss(outputs, target.float())
    with pytest.raises(ValueError, match=r"shape \(B, H, W\) with B=2"):
        model.compute_loss(outputs, target[:1])
    # (B, 1, H, W) is the same target; -100 (torch's default) works as an ignore index too
    assert _loss(model, outputs, target[:, None]).item() == _loss(model, outputs, target).item()
    moved = torch.where(target == IGNORE, -100, target)
    assert _loss(model, outputs, moved, ignore_index=-100).item() == pytest.approx(_loss(model, outputs, target).item())


@pytest.mark.parametrize("head", SET_HEADS)
def test_set_heads_refuse_eval_outputs_saying_train(head):
    model = _create(head).eval()
    x, target = _batch()
    with torch.no_grad():
        logits = model(x)
    with pytest.raises(TypeError, match=r"call model.train\(\) before the forward pass"):
        model.compute_loss(logits, target)


def test_per_pixel_heads_refuse_set_predictions():
    set_outputs = _create("mask2former").train()(_batch()[0])
    with pytest.raises(TypeError, match="predicts per-pixel logits, but compute_loss got a dict of set predictions"):
        _create("upernet").compute_loss(set_outputs, _batch()[1])


# -- one training loop for every head --------------------------------------------------------


def test_one_training_loop_trains_every_head(capsys):
    """The loop of docs/training.md through the public API: the loss falls on a fixed batch,
    every trainable parameter gets a gradient, and the ignored columns' logits get none."""
    x, target = _batch(ignored_columns=8)
    report = []
    for head in MODELS:
        model = _create(head)
        optimizer = torch.optim.AdamW(segzoo.optim.param_groups(model, lr=1e-3))
        model.train()
        losses = []
        for step in range(4):
            if hasattr(model, "set_mask_annealing"):
                model.set_mask_annealing(step / 4)
            outputs = model(x)
            loss = _loss(model, outputs, target, ignore_index=IGNORE)
            optimizer.zero_grad()
            loss.backward()
            if step == 0:
                missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
                assert not missing, f"{head}: no gradient for {missing[:5]}"
            optimizer.step()
            losses.append(loss.item())
        report.append(f"{head}: {' -> '.join(f'{value:.3f}' for value in losses)}")
        assert losses[-1] < losses[0], report[-1]
        logits = model(x)
        if isinstance(logits, dict):
            continue  # set heads: tested above at the mask resolution
        grad = torch.autograd.grad(model.compute_loss(logits, target), logits)[0]
        assert grad[..., 56:].abs().max() == 0 and grad[..., :56].abs().max() > 0
    with capsys.disabled():
        print("\nloss per step:", "; ".join(report))


def test_the_nnunet_bridge_passes_the_ignore_label_to_set_heads():
    pytest.importorskip("nnunetv2")
    from nnunet_bridge.training.losses import _ModelOwnLoss, _predicts_sets

    model = _create("eomt").train()
    x, target = _batch()
    nnunet_target = torch.where(target == IGNORE, 3, target)[:, None].float()  # nnU-Net: ignore = last label
    loss = _ModelOwnLoss(model, per_pixel_loss=None, ignore_label=3)
    outputs = model(x)
    torch.manual_seed(1)
    got = loss(outputs, nnunet_target)
    assert got.item() == _loss(model, outputs, target).item()
    assert _predicts_sets("eomt_dinov3_small", model) and not _predicts_sets("segformer_dinov3_small", _create("dpt"))
