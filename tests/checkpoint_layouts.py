"""Checkpoints in the original published layouts, written from a tiny timm source model
with the key names the real files use (Meta DINOv2/DINOv3, MAE/RETFound, DINO-teacher/VisionFM,
MedDINOv3's teacher file), and from a tiny transformers Dinov2Model (RAD-DINO's model.safetensors)."""

from __future__ import annotations

import argparse

import timm
import torch

from segzoo.backbones import get_backbone_spec

from tests.tiny_models import tiny_vit


def source_vit(backbone: str, **overrides) -> torch.nn.Module:
    """The unpruned timm ViT a published file was saved from, at test size, with random
    weights everywhere (layer scale and biases included, so a dropped key would show)."""
    spec = get_backbone_spec(backbone)
    kwargs = {**spec.timm_kwargs, **tiny_vit(spec.name), **overrides}
    model = timm.create_model(spec.timm_arch, pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


# -- writers of the original layouts ------------------------------------------------------------


def meta_dinov2(state: dict, registers: bool = False, swiglu: bool = False) -> dict:
    """Meta's hub files (dinov2_vit*14[_reg4]_pretrain.pth): a flat state dict with mask_token;
    register models keep the class position inside pos_embed and name registers register_tokens."""
    out = {}
    for k, v in state.items():
        if swiglu:
            k = k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.")
        out[k] = v.clone()
    dim = state["cls_token"].shape[-1]
    out["mask_token"] = torch.randn(1, dim)
    if registers:
        cls_pos = torch.randn(1, 1, dim)
        out["register_tokens"] = out.pop("reg_token")
        out["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
        out["cls_token"] = state["cls_token"] - cls_pos
    return out


def meta_dinov3(state: dict, num_heads: int, qkv_bias: bool = True) -> dict:
    """Meta's DINOv3 files (dinov3_vit*16_pretrain_lvd1689m-*.pth). ``qkv_bias=False``: a model built
    with ``vit_base(qkv_bias=False, mask_k_bias=True)`` (MedDINOv3), whose LinearKMaskedBias registers
    its ``bias_mask`` only next to a bias, so neither is in the file."""
    out = {}
    dim = state["cls_token"].shape[-1]
    for k, v in state.items():
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        out[k] = v.clone()
        if k.endswith("attn.qkv.weight") and qkv_bias:
            out[k.replace("weight", "bias")] = torch.zeros(3 * dim)  # distilled models: all-zero qkv bias
            out[k.replace("weight", "bias_mask")] = torch.ones(3 * dim)
    out["mask_token"] = torch.randn(1, dim)
    out["rope_embed.periods"] = torch.rand(dim // num_heads // 4)
    return out


def mae_checkpoint(state: dict) -> dict:
    """RETFound / MAE pre-training file: {'model': encoder + decoder_* + mask_token, 'args', 'epoch'}."""
    dim = state["cls_token"].shape[-1]
    model = {k: v.clone() for k, v in state.items()}
    model.update({
        "mask_token": torch.randn(1, 1, 32),
        "decoder_embed.weight": torch.randn(32, dim),
        "decoder_embed.bias": torch.randn(32),
        "decoder_pos_embed": torch.randn(1, state["pos_embed"].shape[1], 32),
        "decoder_blocks.0.norm1.weight": torch.randn(32),
        "decoder_blocks.0.attn.qkv.weight": torch.randn(96, 32),
        "decoder_norm.weight": torch.randn(32),
        "decoder_pred.weight": torch.randn(16 * 16 * 3, 32),
        "decoder_pred.bias": torch.randn(16 * 16 * 3),
    })
    return {"model": model, "epoch": 799, "args": argparse.Namespace(model="mae_vit_large_patch16", mask_ratio=0.75)}


def dino_teacher(state: dict, prefix: str = "backbone.", ibot: bool = False) -> dict:
    """VisionFM / RETFound-DINOv2 training file: {'teacher': {prefix + encoder, head.*}, 'student', ...}."""
    teacher = {prefix + k: v.clone() for k, v in state.items()}
    if ibot:
        teacher[prefix + "masked_embed"] = torch.randn(1, state["cls_token"].shape[-1])
    head = "module.head." if prefix.startswith("module.") else "head."
    teacher.update({
        head + "mlp.0.weight": torch.randn(128, state["cls_token"].shape[-1]),
        head + "mlp.0.bias": torch.randn(128),
        head + "last_layer.weight_g": torch.randn(256, 1),
        head + "last_layer.weight_v": torch.randn(256, 128),
    })
    return {"teacher": teacher, "epoch": 100, "args": argparse.Namespace(arch="vit_base")}


def _dino_projection_head(prefix: str, dim: int) -> dict:
    """DINOv3's DINOHead: an MLP (Linear, GELU, Linear, GELU, Linear) and a bias-free last layer."""
    return {f"{prefix}.mlp.0.weight": torch.randn(48, dim), f"{prefix}.mlp.0.bias": torch.randn(48),
            f"{prefix}.mlp.2.weight": torch.randn(48, 48), f"{prefix}.mlp.2.bias": torch.randn(48),
            f"{prefix}.mlp.4.weight": torch.randn(16, 48), f"{prefix}.mlp.4.bias": torch.randn(16),
            f"{prefix}.last_layer.weight": torch.randn(96, 16)}


def meddinov3_checkpoint(state: dict, num_heads: int) -> dict:
    """MedDINOv3's model.pth: DINOv3 training's teacher file, {'teacher': model_ema.state_dict()}, whose
    ModuleDict holds ``backbone`` (vit_base(n_storage_tokens=4, qkv_bias=False, mask_k_bias=True)),
    ``dino_head`` and ``ibot_head``; the authors load it by dropping the heads and the ``backbone.`` prefix."""
    backbone = meta_dinov3(state, num_heads, qkv_bias=False)
    dim = state["cls_token"].shape[-1]
    teacher = {"backbone." + k: v for k, v in backbone.items()}
    teacher.update(_dino_projection_head("dino_head", dim))
    teacher.update(_dino_projection_head("ibot_head", dim))
    return {"teacher": teacher}


def transformers_dinov2(width: int = 64, depth: int = 4, heads: int = 2, image_size: int = 518, registers: int = 0):
    """A tiny transformers Dinov2Model (Dinov2WithRegistersModel with ``registers``) with random weights
    everywhere, as RAD-DINO's and facebook/dinov2-*'s model.safetensors come from; save it with
    ``save_pretrained`` to get transformers' saved key names."""
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    fields = dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, mlp_ratio=4,
                  image_size=image_size, patch_size=14, layerscale_value=1.0)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **fields))
    else:
        model = Dinov2Model(Dinov2Config(**fields))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def dinov2_repo_layout(model) -> dict:
    """A transformers DINOv2 model's tensors under the DINOv2 repository's names (``torch.hub``'s
    ``dinov2_vitb14`` state dict: flat ``blocks.N.``, one ``attn.qkv``), as RAD-DINO's
    backbone_compatible.safetensors holds them; read from the modules, not by renaming keys."""
    emb = model.embeddings
    out = {"cls_token": emb.cls_token, "mask_token": emb.mask_token, "pos_embed": emb.position_embeddings,
           "patch_embed.proj.weight": emb.patch_embeddings.projection.weight,
           "patch_embed.proj.bias": emb.patch_embeddings.projection.bias,
           "norm.weight": model.layernorm.weight, "norm.bias": model.layernorm.bias}
    for i, layer in enumerate(model.encoder.layer):
        attn = layer.attention
        parts = {
            "norm1": layer.norm1, "norm2": layer.norm2, "mlp.fc1": layer.mlp.fc1, "mlp.fc2": layer.mlp.fc2,
            "attn.proj": attn.o_proj,
        }
        for name, module in parts.items():
            out[f"blocks.{i}.{name}.weight"], out[f"blocks.{i}.{name}.bias"] = module.weight, module.bias
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([getattr(p, kind) for p in (attn.q_proj, attn.k_proj,
                                                                                      attn.v_proj)])
        out[f"blocks.{i}.ls1.gamma"], out[f"blocks.{i}.ls2.gamma"] = layer.layer_scale1.lambda1, layer.layer_scale2.lambda1
    return {k: v.detach().clone().contiguous() for k, v in out.items()}
