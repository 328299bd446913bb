"""EoMT on ViT backbones: queries through timm's last blocks, masked attention and its
annealing, set outputs in train(), log-probabilities in eval(), transformers parity."""

import pytest
import torch
import torch.nn.functional as F

import segzoo
from segzoo.heads.eomt import mask_annealing_probability, query_attention_mask
from segzoo.heads.mask2former import label_map_to_mask_targets
from tests.tiny_models import TINY_EOMT, tiny_vit


def _model(name: str = "eomt_dinov2_small", **kwargs):
    return segzoo.create_model(name, num_classes=3, **{**TINY_EOMT, "backbone_kwargs": tiny_vit(name), **kwargs})


def _batch(size=(56, 70)):
    x = torch.randn(2, 3, *size)
    target = torch.zeros(2, *size, dtype=torch.long)
    target[:, 10:30, 20:50] = 1
    target[1, 40:, :30] = 2
    return x, target


def test_train_outputs_are_set_predictions_before_each_query_block_and_after_the_last():
    model = _model().train()
    out = model(torch.randn(2, 3, 56, 56))
    assert out["class_queries_logits"].shape == (2, 8, 3 + 1)  # + "no object"
    assert out["masks_queries_logits"].shape == (2, 8, 16, 16)  # 4x the 14-px patch grid
    assert len(out["auxiliary_outputs"]) == 2  # one per query block, predicted from the tokens entering it


def test_every_parameter_gets_a_gradient_and_a_step_lowers_the_loss():
    model = _model("eomt_dinov3_small")
    x, target = _batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def loss_now():
        torch.manual_seed(1)  # same sampled points and same annealing draws before and after the step
        return model.compute_loss(model(x), target)

    before = loss_now()
    before.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    optimizer.step()
    with torch.no_grad():
        after = loss_now()
    assert torch.isfinite(before) and after < before


@pytest.mark.parametrize("name, size", [("eomt_dinov3_small", (16, 16)), ("eomt_dinov3_small", (131, 97)),
                                        ("eomt_dinov2_reg4_small", (56, 70)), ("eomt_visionfm_base", (40, 33))])
def test_eval_returns_log_probabilities_at_any_input_size(name, size):
    model = _model(name, in_chans=1).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 1, *size))
    assert logits.shape == (2, 3, *size) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits.exp().sum(1), torch.ones(2, *size))


def test_mask_module_and_classes_match_transformers_eomt_predict():
    """Same modules, same weights: the head on our tokens = transformers' EoMT `predict` on its own layout."""
    from transformers import EomtConfig, EomtForUniversalSegmentation

    model = _model("eomt_dinov2_reg4_small")
    head = model.decode_head
    config = EomtConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        num_labels=3, num_queries=8, num_blocks=1, num_register_tokens=4, patch_size=14,
                        image_size=56)
    reference = EomtForUniversalSegmentation(config).eval()
    for part in ("upscale_block", "mask_head", "class_predictor"):
        getattr(reference, part).load_state_dict(getattr(head, part).state_dict())
    normed = torch.randn(2, 8 + 5 + 16, 64)  # transformers' order: queries, CLS + 4 registers, 4x4 patches
    queries, prefix, patches = normed[:, :8], normed[:, 8:13], normed[:, 13:]
    with torch.no_grad():
        expected_masks, expected_classes = reference.predict(normed)
        ours = torch.cat([prefix, patches, queries], dim=1)  # ours: prefix, patches, queries
        masks, classes = head(ours[:, -8:], model._patch_map(ours, (4, 4)))
    torch.testing.assert_close(masks, expected_masks, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(classes, expected_classes, atol=1e-5, rtol=1e-5)


def test_loss_equals_transformers_eomt_loss():
    """The head's loss (batched matcher) against transformers' EomtLoss with its own matcher."""
    from transformers.models.eomt.modeling_eomt import EomtHungarianMatcher, EomtLoss

    model = _model()
    head = model.decode_head
    x, target = _batch()
    with torch.no_grad():
        outputs = model(x)
    mask_labels, class_labels = label_map_to_mask_targets(F.pad(target, (0, 0, 0, 0), value=-1), 3)
    reference = EomtLoss(config=head.config, weight_dict=head.loss_weights)
    assert type(reference.matcher) is EomtHungarianMatcher
    torch.manual_seed(11)
    ours = head.loss_components(outputs, mask_labels, class_labels)
    torch.manual_seed(11)
    theirs = reference(
        masks_queries_logits=outputs["masks_queries_logits"], class_queries_logits=outputs["class_queries_logits"],
        mask_labels=mask_labels, class_labels=class_labels, auxiliary_predictions=outputs["auxiliary_outputs"],
    )
    assert set(ours) == set(theirs) and len(ours) == 3 * 3  # final + 2 query blocks
    for name, value in theirs.items():
        weight = next(w for key, w in head.loss_weights.items() if name.startswith(key))
        torch.testing.assert_close(ours[name], value * weight, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "additive"])
def test_a_masked_query_sees_only_the_patches_its_mask_covers_in_timms_attention(fused):
    model = _model("eomt_dinov3_small")
    backbone = model.backbone
    attention = backbone.model.blocks[-1].attn  # timm's EvaAttention, with RoPE
    attention.fused_attn = fused  # timm's SDPA path takes the boolean mask, its own path the additive one
    grid, prefix = (4, 4), backbone.num_prefix_tokens  # DINOv3: CLS + 4 registers
    mask_logits = -torch.ones(1, 8, 16, 16)
    mask_logits[0, 0, :8, :8] = 1.0  # query 0 covers the top-left 2x2 patches; the others cover nothing
    attn_mask = query_attention_mask(mask_logits, grid, prefix, 1.0, additive_dtype=None if fused else torch.float32)
    tokens, rope = backbone.embed_tokens(torch.randn(1, 3, 64, 64))
    tokens = torch.cat([tokens, torch.randn(1, 8, 64)], dim=1)
    rope = segzoo.models.eomt_segmenter._with_identity_rotation(rope, 8)

    def attend(changed_patch):
        changed = tokens.clone()
        changed[:, prefix + changed_patch] += 5.0
        with torch.no_grad():
            return attention(changed, rope=rope, attn_mask=attn_mask) - attention(tokens, rope=rope, attn_mask=attn_mask)

    uncovered = attend(10)  # patch (2, 2): no query covers it
    assert uncovered[:, -8:].abs().max() < 1e-6  # no query saw it
    assert uncovered[:, prefix:prefix + 10].abs().amax(-1).min() > 1e-3  # every patch attends freely
    covered = attend(0)  # patch (0, 0): covered by query 0 only
    assert covered[:, -8].abs().max() > 1e-3 and covered[:, -7:].abs().max() < 1e-6


def test_rope_rotates_only_the_patches_with_the_queries_appended():
    """Queries last with an identity rotation = queries as extra prefix tokens of timm's RoPE attention."""
    model = _model("eomt_dinov3_small")
    backbone = model.backbone
    block = backbone.model.blocks[-1]
    tokens, rope = backbone.embed_tokens(torch.randn(2, 3, 48, 64))
    queries = torch.randn(2, 8, 64)
    prefix = backbone.num_prefix_tokens
    with torch.no_grad():
        ours = block(torch.cat([tokens, queries], 1),
                     rope=segzoo.models.eomt_segmenter._with_identity_rotation(rope, 8))
        block.attn.num_prefix_tokens += 8  # timm's own handling: queries among the unrotated prefix
        theirs = block(torch.cat([tokens[:, :prefix], queries, tokens[:, prefix:]], 1), rope=rope)
    torch.testing.assert_close(ours[:, -8:], theirs[:, prefix:prefix + 8], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[:, :prefix], theirs[:, :prefix], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[:, prefix:-8], theirs[:, prefix + 8:], atol=1e-5, rtol=1e-5)


def test_annealing_schedule_is_staggered_and_ends_without_masks():
    assert [mask_annealing_probability(0.0, i, 4) for i in range(4)] == [1.0] * 4
    assert [mask_annealing_probability(5 / 6, i, 4) for i in range(4)] == [0.0] * 4
    # 12 epochs, 4 blocks: block i anneals from epoch 2(i+1) to 2(i+2)
    middle = [mask_annealing_probability(3 / 12, i, 4) for i in range(4)]
    assert middle[0] == pytest.approx(0.5 ** 0.9) and middle[1:] == [1.0, 1.0, 1.0]
    probs = [[mask_annealing_probability(p / 100, i, 4) for i in range(4)] for p in range(101)]
    for block in range(4):  # each block's probability only falls
        column = [row[block] for row in probs]
        assert column == sorted(column, reverse=True)
    model = _model()
    with pytest.raises(ValueError, match=r"progress must be a number in \[0, 1\]"):
        model.set_mask_annealing(1.5)


def test_annealing_state_is_saved_and_an_annealed_model_predicts_without_masks(tmp_path):
    model = _model().eval()
    x = torch.randn(1, 3, 42, 56)
    assert model.mask_probabilities == [1.0, 1.0]
    model.set_mask_annealing(0.5)  # 2 blocks: windows [1/4, 2/4] and [2/4, 3/4]
    assert model.mask_probabilities == [0.0, 1.0]
    model.set_mask_annealing(1.0)
    with torch.no_grad():
        masked_free = model(x)
        # the same tokens with the last blocks called without any mask: what "annealed" means
        backbone, head = model.backbone, model.decode_head
        first = backbone.depth - head.num_blocks  # the queries join before the last num_blocks blocks
        tokens, _ = backbone.embed_tokens(x)
        for index in range(first):
            tokens = backbone.run_block(index, tokens)
        tokens = torch.cat([tokens, head.query.weight[None]], 1)
        for index in range(first, backbone.depth):
            tokens = backbone.run_block(index, tokens)
        manual = model._predict(tokens, (3, 4))
    outputs = {"class_queries_logits": manual[1], "masks_queries_logits": manual[0]}
    scores = F.interpolate(head.semantic_probabilities(outputs), size=(42, 56), mode="bilinear")
    assert (masked_free.argmax(1) == scores.argmax(1)).all()
    folder = segzoo.save_pretrained(model, tmp_path / "saved")
    reloaded = segzoo.create_model(str(folder)).eval()
    assert reloaded.mask_probabilities == [0.0, 0.0]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), masked_free)


def test_eval_masks_deterministically_and_train_draws_which_queries_keep_their_mask():
    model = _model()
    with torch.no_grad():  # DINOv2's layer scale starts at 1e-5: make attention matter at once
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.fill_(1.0)
    x = torch.randn(2, 3, 56, 56)
    model.set_mask_annealing(0.3)  # first block half annealed
    with torch.no_grad():
        model.eval()
        torch.manual_seed(0)
        first = model(x)
        torch.manual_seed(1)
        torch.testing.assert_close(model(x), first)  # eval draws nothing
        model.train()
        torch.manual_seed(0)
        draw_a = model(x)["masks_queries_logits"]
        torch.manual_seed(1)
        draw_b = model(x)["masks_queries_logits"]
    assert (draw_a - draw_b).abs().max() > 1e-3


def test_timm_switches_reach_the_query_blocks():
    model = _model("eomt_dinov3_small", freeze_backbone=True)
    last_block = model.backbone.model.blocks[-1]
    assert not any(p.requires_grad for p in last_block.parameters())
    assert not any(p.requires_grad for p in model.backbone.model.norm.parameters())
    assert all(p.requires_grad for p in model.decode_head.parameters())
    model = _model("eomt_dinov3_small", lora=dict(r=4))
    assert hasattr(model.backbone.model.blocks[-1].attn.qkv, "lora_A")  # peft wrapped the query blocks too
    x, target = _batch((32, 48))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same weights both times: only the checkpointing differs
        model = _model("eomt_dinov2_small", grad_checkpointing=checkpointing)
        torch.manual_seed(3)
        model.compute_loss(model(x), target).backward()
        grads.append(model.backbone.model.blocks[-1].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_classifier_methods_and_bad_settings_name_the_fix():
    model = _model()
    assert model.get_classifier() is model.decode_head.class_predictor
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 6 and model.decode_head.criterion.empty_weight.shape == (6,)
    with pytest.raises(ValueError, match=r"num_blocks <= 4"):
        _model(num_blocks=5)
    with pytest.raises(ValueError, match="takes no neck"):
        _model(neck="pyramid")
    with pytest.raises(ValueError, match="takes no feature_indices"):
        _model(feature_indices=[0, 1, 2, 2])
    with pytest.raises(ValueError, match="num_queries must be an integer >= 1"):
        _model(num_queries=0)


def test_forward_features_are_the_normed_patch_tokens_the_mask_module_upscales():
    model = _model("eomt_dinov2_small").eval()
    assert model.feature_info == [dict(num_chs=64, reduction=14, module="backbone")]
    x = torch.randn(1, 3, 70, 84)
    with torch.no_grad():
        (features,) = model.forward_features(x)
        outputs = model.forward_set_predictions(x)
        tokens, _ = model._encode(x, (5, 6))
        queries = model.backbone.model.norm(tokens)[:, -8:]
        masks, _ = model.decode_head(queries, features)
    assert features.shape == (1, 64, 5, 6)
    torch.testing.assert_close(masks, outputs["masks_queries_logits"])


def test_full_size_defaults_on_meta():
    with torch.device("meta"):
        model = segzoo.create_model("eomt_dinov3_large", num_classes=4)
    head = model.decode_head
    assert (head.num_queries, head.num_blocks, len(head.upscale_block.block)) == (100, 4, 2)
    assert model.backbone.depth == 24 and model.mask_probabilities == [1.0] * 4
    assert model.model_kwargs == {"num_classes": 4, "in_chans": 3}


def test_without_deep_supervision_an_annealed_model_trains_on_the_final_prediction_only():
    model = _model(deep_supervision=False)
    assert len(model(torch.randn(1, 3, 28, 28))["auxiliary_outputs"]) == 0
    x, target = _batch((28, 42))
    model.set_mask_annealing(1.0)
    loss = model.compute_loss(model(x), target)
    assert torch.isfinite(loss)
    loss.backward()  # the head's modules all still take part in the final prediction
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
