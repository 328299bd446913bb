"""Mask2Former on ViT backbones: set outputs in train(), semantic logits in eval(), its loss."""

import pytest
import torch
import torch.nn.functional as F

import segzoo
from tests.tiny_models import TINY_MASK2FORMER

# a tiny transformers Mask2Former: 8 queries, 2 masked-attention layers, 1 deformable layer, 1024 points
TINY_M2F = dict(TINY_MASK2FORMER, train_num_points=1024)


@pytest.fixture
def model(tiny):
    # DINOv2 (no RoPE jitter): the train-mode forward is deterministic
    return segzoo.create_model("mask2former_dinov2_small", num_classes=3, **tiny, **TINY_M2F)


def _batch():
    x = torch.randn(2, 3, 56, 70)
    target = torch.zeros(2, 56, 70, dtype=torch.long)
    target[:, 10:30, 20:50] = 1
    target[1, 40:, :30] = 2
    return x, target


def test_one_optimisation_step_lowers_the_loss(model):
    x, target = _batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def loss_now():
        torch.manual_seed(1)  # the loss samples points at random: same points before and after the step
        return model.compute_loss(model(x), target)

    before = loss_now()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss_now()
    assert before.ndim == 0 and torch.isfinite(before)
    assert after < before


def test_train_outputs_are_the_raw_set_predictions(model):
    out = model.train()(torch.randn(2, 3, 56, 56))
    assert out["class_queries_logits"].shape == (2, 8, 3 + 1)  # + "no object"
    assert out["masks_queries_logits"].shape == (2, 8, 16, 16)  # 4x the 14-px patch grid
    assert len(out["auxiliary_outputs"]) == 2  # one per earlier decoder layer (deep supervision)


def test_every_parameter_gets_a_gradient_from_the_loss(model):
    x, target = _batch()
    model.compute_loss(model(x), target).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.mark.parametrize("size", [(56, 70), (14, 14), (131, 97)])
def test_eval_returns_log_probabilities_at_the_input_size(model, size):
    model.eval()
    x = torch.randn(2, 3, *size)
    # the documented padding: zeros on the bottom/right up to a multiple of the 14-px patch
    assert model.pad_multiple == 14
    pad_h, pad_w = -size[0] % 14, -size[1] % 14
    with torch.no_grad():
        logits = model(x)
        outputs = model.decode_head(model.neck(model.backbone(F.pad(x, (0, pad_w, 0, pad_h)))))
    assert logits.shape == (2, 3, *size) and torch.isfinite(logits).all()
    # by construction: normalised class scores, so the probabilities sum to 1 at every pixel
    torch.testing.assert_close(logits.exp().sum(1), torch.ones(2, *size))
    torch.testing.assert_close(logits.softmax(1), logits.exp(), atol=1e-6, rtol=1e-5)
    # argmax = Mask2Former's semantic inference: sum over queries of P(class) x P(mask)
    scores = model.decode_head.semantic_probabilities(outputs)
    padded = (size[0] + pad_h, size[1] + pad_w)
    scores = F.interpolate(scores, size=padded, mode="bilinear", align_corners=False)[..., : size[0], : size[1]]
    assert (logits.argmax(1) == scores.argmax(1)).float().mean() > 0.999


def test_same_stride_neck_works(tiny):
    model = segzoo.create_model("mask2former_dinov3_small", num_classes=2, neck="none", **tiny, **TINY_M2F)
    x, target = torch.randn(2, 3, 48, 64), torch.randint(0, 2, (2, 48, 64))
    assert torch.isfinite(model.compute_loss(model(x), target))
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 2, 48, 64)


def test_channel_dimension_target_accepted_and_in_chans(tiny):
    model = segzoo.create_model("mask2former_dinov3_base", num_classes=2, in_chans=1, **tiny, **TINY_M2F)
    x, target = torch.randn(2, 1, 40, 40), torch.randint(0, 2, (2, 1, 40, 40))
    assert torch.isfinite(model.compute_loss(model(x), target))


def test_loss_errors_name_the_fix(model):
    x, target = _batch()
    outputs = model(x)
    with pytest.raises(ValueError, match=r"target holds 5, 10: neither class ids in \[0, 2\].*nor ignore_index=255"):
        model.compute_loss(outputs, target * 5)
    with pytest.raises(ValueError, match=r"ignore_index=1 is a class id for num_classes=3"):
        model.compute_loss(outputs, target, ignore_index=1)
    with pytest.raises(TypeError, match=r"integer tensor.*target.long\(\)"):
        model.compute_loss(outputs, target.float())
    with pytest.raises(ValueError, match=r"shape \(B, H, W\) with B=2"):
        model.compute_loss(outputs, target[0])
    with torch.no_grad():
        logits = model.eval()(x)
    with pytest.raises(TypeError, match=r"model.train\(\)"):
        model.compute_loss(logits, target)


def test_head_options_are_checked(tiny):
    with pytest.raises(ValueError, match="multiple of 32"):
        segzoo.create_model("mask2former_dinov2_small", num_classes=2, backbone_kwargs=tiny["backbone_kwargs"],
                            decoder_hidden_size=48)
    with pytest.raises(ValueError, match="num_queries must be an integer >= 1"):
        segzoo.create_model("mask2former_dinov2_small", num_classes=2, **tiny, num_queries=0)


def test_full_size_defaults_and_rebuild_kwargs():
    with torch.device("meta"):
        model = segzoo.create_model("mask2former_dinov3_large", num_classes=4, num_queries=50)
    config = model.decode_head.config
    assert (config.hidden_dim, config.decoder_layers, config.encoder_layers) == (256, 10, 6)
    assert model.decode_head.transformer_module.queries_features.num_embeddings == 50
    assert model.model_kwargs == {"num_classes": 4, "in_chans": 3, "num_queries": 50}
    assert callable(model.compute_loss)


def _set_outputs(batch: int = 3, queries: int = 8, classes: int = 3, size: int = 16):
    generator = torch.Generator().manual_seed(5)
    masks = torch.randn(batch, queries, size, size, generator=generator)
    logits = torch.randn(batch, queries, classes + 1, generator=generator)
    label_map = torch.zeros(batch, 4 * size, 4 * size, dtype=torch.long)
    label_map[0, 5:30, 10:40] = 1
    label_map[0, 40:, :20] = 2
    label_map[1, :, 32:] = 2           # image 1: classes 0 and 2
    label_map[2] = 1                   # image 2: one class only
    label_map[2, -3:, :] = -1          # padding belongs to no mask
    mask_labels, class_labels = segzoo.heads.mask2former.label_map_to_mask_targets(label_map, classes)
    return masks, logits, mask_labels, class_labels


def test_batched_matcher_assigns_as_transformers_does():
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerHungarianMatcher

    from segzoo.heads.mask_matching import BatchedHungarianMatcher

    masks, logits, mask_labels, class_labels = _set_outputs()
    costs = dict(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=256)
    torch.manual_seed(7)
    expected = Mask2FormerHungarianMatcher(**costs)(masks, logits, mask_labels, class_labels)
    torch.manual_seed(7)
    got = BatchedHungarianMatcher(**costs)(masks, logits, mask_labels, class_labels)
    assert [len(c) for c in class_labels] == [3, 2, 1]
    for (rows, cols), (expected_rows, expected_cols) in zip(got, expected):
        assert torch.equal(rows, expected_rows) and torch.equal(cols, expected_cols)


def test_loss_equals_transformers_mask2former_loss(model):
    """The head's loss (batched matcher) against transformers' own Mask2FormerLoss on the same outputs."""
    from transformers.models.mask2former.modeling_mask2former import (
        Mask2FormerHungarianMatcher,
        Mask2FormerLoss,
    )

    head = model.decode_head
    x, target = _batch()
    with torch.no_grad():
        outputs = model(x)
    mask_labels, class_labels = segzoo.heads.mask2former.label_map_to_mask_targets(target, 3)
    reference = Mask2FormerLoss(config=head.config, weight_dict=head.loss_weights)
    assert type(reference.matcher) is Mask2FormerHungarianMatcher
    torch.manual_seed(11)
    ours = head.loss_components(outputs, mask_labels, class_labels)
    torch.manual_seed(11)
    theirs = reference(
        masks_queries_logits=outputs["masks_queries_logits"], class_queries_logits=outputs["class_queries_logits"],
        mask_labels=mask_labels, class_labels=class_labels, auxiliary_predictions=outputs["auxiliary_outputs"],
    )
    assert set(ours) == set(theirs) and len(ours) == 3 * 3  # last layer + 2 auxiliary layers
    for name, value in theirs.items():
        weight = next(w for key, w in head.loss_weights.items() if name.startswith(key))
        torch.testing.assert_close(ours[name], value * weight, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


def test_mask_targets_hold_each_present_class_once():
    _, _, mask_labels, class_labels = _set_outputs()
    assert [c.tolist() for c in class_labels] == [[0, 1, 2], [0, 2], [1]]
    assert mask_labels[2].shape == (1, 64, 64) and mask_labels[2][0, -3:].sum() == 0  # padding in no mask
    for masks in mask_labels:
        assert masks.dtype == torch.float32 and (masks.sum(0) <= 1).all()


def test_one_patch_inputs_work_at_width_32_in_train_and_eval(tiny):
    """GroupNorm(32, 32) has one channel per group; a one-patch image gives it a 1x1 map."""
    model = segzoo.create_model("mask2former_dinov3_small", num_classes=3, **tiny, **TINY_M2F)
    assert tiny["decoder_hidden_size"] == 32
    x = torch.randn(1, 3, 16, 16)
    model.train()
    loss = model.compute_loss(model(x), torch.randint(0, 3, (1, 16, 16)))
    loss.backward()
    assert torch.isfinite(loss)
    with torch.no_grad():
        logits = model.eval()(x)
    assert logits.shape == (1, 3, 16, 16) and torch.isfinite(logits).all()


def test_the_one_channel_group_norm_gives_what_group_norm_gives_a_larger_batch():
    from segzoo.heads.mask2former import OneChannelGroupNorm

    reference = torch.nn.GroupNorm(4, 4)
    torch.nn.init.normal_(reference.weight)
    torch.nn.init.normal_(reference.bias)
    norm = OneChannelGroupNorm(4, 4)
    norm.load_state_dict(reference.state_dict())
    x = torch.randn(2, 4, 1, 1)
    torch.testing.assert_close(norm(x[:1]), reference(x)[:1])  # torch takes two images, not one
    larger = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(norm(larger), reference(larger))  # any other input: GroupNorm itself


def test_eval_logits_come_back_in_the_heads_precision(tiny):
    model = segzoo.create_model("mask2former_dinov3_small", num_classes=3, **tiny, **TINY_M2F).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).dtype == torch.float32
        assert model.to(torch.bfloat16)(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16
