import json
from pathlib import Path
import warnings

import peft
import pytest
import torch
from safetensors.torch import load_file

import segzoo
from segzoo.lora import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    apply_lora,
    has_lora,
    load_lora_adapter,
    merge_lora,
    save_lora_adapter,
)

NAME = "segformer_dinov3_base"


def _lora_model(tiny, **lora):
    model = segzoo.create_model(NAME, num_classes=3, lora=dict(r=4, alpha=8, dropout=0.0, **lora), **tiny)
    _train_adapters(model)
    return model.eval()


def _train_adapters(model):
    # peft starts lora_B at zero (a no-op adapter); give the adapters and head non-trivial values
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))


def test_create_model_lora_freezes_base_and_keeps_neck_head_trainable(tiny):
    model = _lora_model(tiny)
    qkv = model.backbone.model.blocks[0].attn.qkv
    assert isinstance(qkv, peft.tuners.lora.Linear) and has_lora(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    backbone_trainable = {n for n in trainable if n.startswith("backbone.")}
    assert backbone_trainable and all(".lora_A." in n or ".lora_B." in n for n in backbone_trainable)
    assert all(p.requires_grad for p in model.neck.parameters())
    assert all(p.requires_grad for p in model.decode_head.parameters())
    assert model.model_kwargs["lora"] == dict(r=4, alpha=8.0, dropout=0.0, target_modules=["qkv"])
    # the timm model keeps its own API under peft
    assert model(torch.randn(1, 3, 48, 40)).shape == (1, 3, 48, 40)


def test_model_rebuilds_from_recorded_kwargs(tiny):
    model = _lora_model(tiny)
    rebuilt = segzoo.create_model(model.model_name, **model.model_kwargs)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), model(x))


def test_merge_gives_plain_model_with_equal_outputs(tiny):
    model = _lora_model(tiny, target_modules=["qkv", "fc2"])
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        before = model(x)
    merged = merge_lora(model)
    assert not has_lora(merged) and "lora" not in merged.model_kwargs
    plain = segzoo.create_model(NAME, num_classes=3, **tiny)
    assert merged.state_dict().keys() == plain.state_dict().keys()
    assert all(p.requires_grad for p in merged.parameters())  # trainable again, as before apply_lora
    with torch.no_grad():
        torch.testing.assert_close(merged(x), before, atol=1e-5, rtol=1e-5)


def test_adapter_only_save_and_load_on_same_base(tiny, tmp_path):
    base = segzoo.create_model(NAME, num_classes=3, **tiny)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    model = apply_lora(base, r=4, alpha=8, dropout=0.0)
    _train_adapters(model)
    model.eval()
    save_lora_adapter(model, tmp_path)

    tensors = load_file(str(tmp_path / ADAPTER_WEIGHTS_NAME))
    assert not any(".base_layer." in k or k.endswith("attn.proj.weight") for k in tensors)  # no base weights
    assert any(".lora_A." in k for k in tensors) and any(k.startswith("decode_head.") for k in tensors)
    assert any(k.startswith("neck.") for k in tensors)
    config = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    assert config["architecture"] == NAME and config["model_kwargs"]["lora"]["r"] == 4
    assert len(config["base_sha256"]) == 64 and config["weights"]["pretrained"] is False

    fresh = segzoo.create_model(NAME, num_classes=3, **tiny)
    fresh.load_state_dict(base_state)  # the same base weights, a fresh head
    loaded = load_lora_adapter(fresh, tmp_path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_load_from_directory_rebuilds_the_base(tiny, tmp_path):
    torch.manual_seed(1)
    model = _lora_model(tiny)
    save_lora_adapter(model, tmp_path)
    torch.manual_seed(1)  # a random-init base is reproducible from the seed
    loaded = segzoo.create_model(tmp_path).eval()  # the recorded base: random init, same seed
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_adapter_folders_are_rebuilt_by_create_model_only(tiny, tmp_path):
    save_lora_adapter(_lora_model(tiny), tmp_path)
    with pytest.raises(TypeError, match=r"segzoo.create_model\(directory\)"):
        load_lora_adapter(tmp_path)
    with pytest.raises(ValueError, match=r"adapter folder.*\['num_classes'\] cannot change.*reset_classifier.*"
                                         r"load_lora_adapter\(base_model, folder\)"):
        segzoo.create_model(tmp_path, num_classes=5)


def test_load_onto_a_different_base_is_refused(tiny, tmp_path):
    model = _lora_model(tiny)
    save_lora_adapter(model, tmp_path)
    other = segzoo.create_model(NAME, num_classes=3, **tiny)  # different random base weights
    with pytest.raises(ValueError, match="base weights differ"):
        load_lora_adapter(other, tmp_path)
    assert not has_lora(other)  # a refused model is left as it was
    with pytest.raises(FileNotFoundError, match="no segzoo LoRA adapter"):
        load_lora_adapter(other, tmp_path / "missing")


def test_bad_lora_arguments_are_named(tiny):
    model = segzoo.create_model(NAME, num_classes=2, **tiny)
    with pytest.raises(ValueError, match=r"available linear layers: \['fc1', 'fc2', 'proj', 'qkv'\]"):
        apply_lora(model, target_modules=["q_proj"])
    for r in (0, -1, 2.5):
        with pytest.raises(ValueError, match="rank r must be an integer >= 1"):
            apply_lora(model, r=r)
    with pytest.raises(ValueError, match="dropout must be in"):
        apply_lora(model, dropout=1.0)
    with pytest.raises(ValueError, match="no LoRA adapters to merge"):
        merge_lora(model)
    assert not has_lora(model)  # nothing was half-applied by the failures
    with pytest.raises(TypeError, match="unknown lora option"):
        segzoo.create_model(NAME, num_classes=2, lora=dict(rank=8), **tiny)
    apply_lora(model)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model)


def test_compatibility_names(tiny, capsys):
    model = segzoo.create_segformer_model(
        backbone_name="dinov3", backbone_size="base", num_classes=2, use_lora=True, lora_rank=4,
        backbone_kwargs=tiny["backbone_kwargs"], decoder_hidden_size=32,
    )
    assert has_lora(model) and model.model_kwargs["lora"]["r"] == 4
    model.disable_lora()
    assert not has_lora(model)
    with pytest.warns(UserWarning, match="LoRA is not enabled"):
        model.disable_lora()
    model.enable_lora(rank=2, lora_alpha=4.0, target_modules=["proj"])
    out = capsys.readouterr().out
    assert "LoRA enabled with rank=2" in out and "trainable params:" in out and "backbone:" in out
    assert isinstance(model.backbone.model.blocks[0].attn.proj, peft.tuners.lora.Linear)
    plain = segzoo.create_segformer_model(
        backbone_size="base", num_classes=2, use_lora=False, backbone_kwargs=tiny["backbone_kwargs"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not has_lora(plain) and plain.model_name == "segformer_dinov3_base"


def test_lora_gradients_reach_adapters_under_checkpointing(tiny):
    model = _lora_model(tiny)
    x = torch.randn(1, 3, 64, 64)
    model(x).sum().backward()
    ref = model.backbone.model.blocks[0].attn.qkv.lora_A["default"].weight.grad.clone()
    assert ref.abs().sum() > 0
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    torch.testing.assert_close(model.backbone.model.blocks[0].attn.qkv.lora_A["default"].weight.grad, ref)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_save_pretrained_adapter_only_reloads_by_folder_onto_the_recorded_base(tiny, tmp_path):
    from safetensors.torch import save_file

    from tests.checkpoint_layouts import source_vit

    base_file = tmp_path / "backbone.safetensors"  # a timm-layout backbone file, as a user would have
    save_file(source_vit("dinov3_base").state_dict(), str(base_file))
    model = segzoo.create_model(NAME, num_classes=3, checkpoint_path=base_file,
                                lora=dict(r=4, alpha=8, dropout=0.0), **tiny)
    _train_adapters(model)
    model.eval()
    out = segzoo.save_pretrained(model, tmp_path / "adapter", adapter_only=True)
    assert not (out / "model.safetensors").exists() and (out / ADAPTER_WEIGHTS_NAME).exists()
    saved = load_file(str(out / ADAPTER_WEIGHTS_NAME))
    assert not any(k.endswith("qkv.base_layer.weight") for k in saved)  # base weights stay out
    assert json.loads((out / "config.json").read_text())["adapter_only"] is True
    reloaded = segzoo.create_model(str(out)).eval()  # rebuilds the base from the recorded checkpoint_path
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x))
    with pytest.raises(ValueError, match="no LoRA adapters"):
        segzoo.save_pretrained(segzoo.create_model(NAME, num_classes=3, **tiny), tmp_path / "x", adapter_only=True)


def test_lora_on_mit_is_refused_before_building_and_by_apply_lora():
    from segzoo.models import supports_lora
    from tests.tiny_models import TINY_MIT

    assert not supports_lora("segformer_mit_b0") and supports_lora("segformer_dinov3_large.lvd1689m")
    # decided from registry data: every ViT-backed model must keep saying yes (a spec without weights would not)
    assert [m for m in segzoo.list_models() if not supports_lora(m)] == [f"segformer_mit_b{i}" for i in range(6)]
    with pytest.raises(ValueError, match=r"segformer_mit_b0 takes no lora: LoRA in segzoo adapts the ViT families"):
        segzoo.create_model("segformer_mit_b0", num_classes=2, lora=dict(r=4), **TINY_MIT)
    model = segzoo.create_model("segformer_mit_b0", num_classes=2, **TINY_MIT)
    with pytest.raises(ValueError, match="freeze_backbone=True to train only the head"):
        segzoo.lora.apply_lora(model, r=4)


def test_peft_loads_only_when_a_model_gets_lora():
    import subprocess
    import sys

    program = (
        "import sys, segzoo; from tests.tiny_models import TINY_VIT\n"
        "assert 'peft' not in sys.modules, 'import segzoo loaded peft'\n"
        "m = segzoo.create_model('segformer_dinov3_small', num_classes=2, backbone_kwargs=TINY_VIT)\n"
        "assert 'peft' not in sys.modules and not segzoo.lora.has_lora(m)\n"
        "m = segzoo.create_model('segformer_dinov3_small', num_classes=2, backbone_kwargs=TINY_VIT, lora=dict(r=2))\n"
        "assert 'peft' in sys.modules and segzoo.lora.has_lora(m)\n"
    )
    # -W error: no third-party FutureWarning (timm's torch.jit.interface) on import either
    subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", program], check=True, timeout=300,
                   cwd=str(Path(__file__).resolve().parents[1]))


def _adapter_folder_on_a_local_base(tiny, tmp_path, monkeypatch):
    """An adapter-only folder whose base was built from a relative checkpoint_path."""
    from safetensors.torch import save_file

    from tests.checkpoint_layouts import source_vit

    monkeypatch.chdir(tmp_path)
    save_file(source_vit("dinov3_base").state_dict(), "backbone.safetensors")
    model = segzoo.create_model(NAME, num_classes=3, checkpoint_path="backbone.safetensors",
                                lora=dict(r=4, alpha=8, dropout=0.0), **tiny)
    _train_adapters(model)
    return model.eval(), segzoo.save_pretrained(model, tmp_path / "adapter", adapter_only=True)


def test_adapter_folder_records_an_absolute_base_path_and_reloads_from_anywhere(tiny, tmp_path, monkeypatch):
    model, folder = _adapter_folder_on_a_local_base(tiny, tmp_path, monkeypatch)
    weights = json.loads((folder / ADAPTER_CONFIG_NAME).read_text())["weights"]
    assert weights == {"pretrained": False, "checkpoint_path": str(tmp_path / "backbone.safetensors"),
                       "hf_hub_id": None}  # nothing was downloaded
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    reloaded = segzoo.create_model(str(folder)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x))


def test_adapter_folder_overrides_apply_or_are_refused_naming_the_way_out(tiny, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from tests.checkpoint_layouts import source_vit

    _, folder = _adapter_folder_on_a_local_base(tiny, tmp_path, monkeypatch)
    reloaded = segzoo.create_model(str(folder), grad_checkpointing=True)
    assert reloaded.backbone.model.grad_checkpointing
    with pytest.raises(ValueError, match=r"\['num_classes'\] cannot change .*reset_classifier"):
        segzoo.create_model(str(folder), num_classes=5)
    with pytest.raises(ValueError, match=r"\['neck'\] cannot change.*grad_checkpointing"):
        segzoo.create_model(str(folder), neck="none")
    # another base file under the recorded path: refused by the fingerprint, loaded with check_base=False
    save_file(source_vit("dinov3_base").state_dict(), str(tmp_path / "backbone.safetensors"))
    with pytest.raises(ValueError, match="check_base=False"):
        segzoo.create_model(str(folder))
    assert segzoo.lora.has_lora(segzoo.create_model(str(folder), check_base=False))


def test_adapter_only_save_of_a_random_base_is_refused(tiny, tmp_path):
    model = _lora_model(tiny)
    with pytest.raises(ValueError, match=r"randomly initialised .*could never be reloaded.*adapter_only=False"):
        segzoo.save_pretrained(model, tmp_path / "adapter", adapter_only=True)
    assert not (tmp_path / "adapter").exists()
