"""Fast tests of the bridge's pieces (config, network wrapper, schedule, plans, CLI); the
nnU-Net end to end runs are in test_nnunet_e2e.py."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

import segzoo
from nnunet_bridge import EXT_TRAINER_DIR, ensure_ext_trainer_path
from nnunet_bridge.config import ConfigError, load_config, resolved_initial_lr, zoo_model_name
from nnunet_bridge.network import ZooNetwork, arch_kwargs_from_config
from nnunet_bridge.training.optimisation import WarmupPolyLR, build_param_groups
from nnunet_bridge.plans import NETWORK_CLASS_NAME, plan
from tests.tiny_models import TINY_VIT

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {"name": "segformer_dinov2_small", "pretrained": False, "decoder_hidden_size": 32,
              "kwargs": {"backbone_kwargs": dict(TINY_VIT)}}


# -- config ----------------------------------------------------------------------------


def test_defaults_keep_the_compatibility_names_and_primus_values():
    config = load_config()
    assert zoo_model_name(config) == "segformer_dinov3_large"
    assert config.model.decoder_hidden_size is None and config.model.checkpoint_path == ""
    assert config.lora.enabled and config.lora.r == 8 and config.lora.alpha == 16
    assert list(config.lora.target_modules) == ["qkv"] and config.lora.dropout == 0.05
    assert config.train.weight_decay == 5e-2 and config.train.gradient_clip == 1.0
    assert list(config.train.betas) == [0.9, 0.98]
    assert resolved_initial_lr(config) == 1e-4
    assert resolved_initial_lr(load_config({"model": {"pretrained": False}})) == 3e-4


def test_user_yaml_overrides_and_name_fills_the_parts(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("model:\n  name: upernet_dinov2_reg4_base\ntrain:\n  initial_lr: 0.001\n")
    config = load_config(path)
    assert (config.model.head, config.model.backbone, config.model.backbone_size) == ("upernet", "dinov2_reg4", "base")
    assert resolved_initial_lr(config) == 1e-3


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"learning_rate"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"optimiser"):
        load_config({"optimiser": {}})


@pytest.mark.parametrize("bad, message", [
    ({"train": {"num_epochs": 10, "warmup_epochs": 10}}, "warmup_epochs"),
    ({"train": {"batch_size": 0}}, "batch_size"),
    ({"model": {"input_normalization": "imagenet"}}, "input_normalization"),
    ({"train": {"num_epochs": "many"}}, "num_epochs"),
])
def test_bad_values_fail_early(bad, message):
    with pytest.raises(ConfigError, match=message):
        load_config(bad)


def test_missing_config_file_is_named():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/my.yaml")


def test_name_parts_are_read_from_the_registry_entry():
    config = load_config({"model": {"name": "segformer_mit_b2.ade20k"}})
    entry = segzoo.model_entry("segformer_mit_b2")
    assert (config.model.head, config.model.backbone, config.model.backbone_size) == \
        (entry.head.name, entry.backbone.family, entry.backbone.size) == ("segformer", "mit", "b2")


def test_a_user_model_fills_only_what_its_entry_names():
    # the registry is global: register in a fresh interpreter
    code = (
        "import segzoo\n"
        "from nnunet_bridge.config import load_config, zoo_model_name\n"
        "@segzoo.register_model(backbone='dinov2_small')\n"
        "def my_net(pretrained=False, **kwargs): ...\n"
        "@segzoo.register_model\n"
        "def plain_net(pretrained=False, **kwargs): ...\n"
        "for name in ('my_net', 'plain_net'):\n"
        "    config = load_config({'model': {'name': name, 'head': 'upernet'}})\n"
        "    print(zoo_model_name(config), config.model.head, config.model.backbone, config.model.backbone_size)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # no head spec: model.head stays as given; no backbone spec: the defaults stay
    assert result.stdout.splitlines() == ["my_net upernet dinov2 small", "plain_net upernet dinov3 large"]


PARTS = "model.head / backbone / backbone_size"


@pytest.mark.parametrize("model, keys, closest", [
    ({"head": "segformr"}, PARTS, "segformer_dinov3_large"),
    ({"backbone": "dinov2", "backbone_size": "smal"}, PARTS, "segformer_dinov2_small"),
    ({"name": "upernet_dinov2_smal"}, "model.name", "upernet_dinov2_small"),
])
def test_an_unregistered_model_is_an_error_naming_the_closest(model, keys, closest):
    with pytest.raises(ConfigError, match=rf"^{re.escape(keys)}: Unknown model .*Closest registered: {closest}"):
        load_config({"model": model})


def test_help_lists_the_registry_heads_and_backbones():
    from segzoo.backbones import BACKBONES

    from nnunet_bridge.config import ModelSection

    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(ModelSection)}
    assert helps["head"].split(" (")[0].split(" | ") == [h.name for h in segzoo.list_heads()]
    families = helps["backbone"].removeprefix("backbone family: ").split(" | ")
    assert families == list(dict.fromkeys(spec.family for spec in BACKBONES.values()))
    assert all(f"{spec.family}: " in helps["backbone_size"] and spec.size in helps["backbone_size"]
               for spec in BACKBONES.values())
    assert not re.search(r"\b(256|512)\b", helps["decoder_hidden_size"])  # the heads own their widths


# -- network ---------------------------------------------------------------------------


def _arch_kwargs(**model):
    config = load_config({"model": {**TINY_MODEL, **model}, "lora": {"enabled": False}})
    return arch_kwargs_from_config(config, "backbone")


def test_nnunet_builds_the_network_from_plans_kwargs():
    kwargs = _arch_kwargs()
    network = get_network_from_plans(NETWORK_CLASS_NAME, kwargs, [], 3, 4, allow_init=True, deep_supervision=True)
    assert isinstance(network, ZooNetwork) and not hasattr(network, "initialize")
    assert network.model.model_name == "segformer_dinov2_small"
    network.eval()
    with torch.no_grad():
        y = network(torch.rand(2, 3, 56, 70))
    assert y.shape == (2, 4, 56, 70) and y.dtype == torch.float32
    assert set(network.state_dict()) == {f"model.{k}" for k in network.model.state_dict()}  # no mean/std buffers


def test_wrapper_applies_the_backbone_mean_std():
    kwargs = _arch_kwargs()
    network = get_network_from_plans(NETWORK_CLASS_NAME, kwargs, [], 3, 2, deep_supervision=False).eval()
    raw = ZooNetwork(network.model, "none").eval()
    x = torch.rand(1, 3, 28, 28)
    mean = torch.tensor(network.model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(network.model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(network(x), raw((x - mean) / std))


def test_one_channel_network():
    network = get_network_from_plans(NETWORK_CLASS_NAME, _arch_kwargs(), [], 1, 3, deep_supervision=False).eval()
    assert network.mean.shape == (1, 1, 1, 1)
    assert network(torch.rand(1, 1, 42, 42)).shape == (1, 3, 42, 42)


def test_plain_param_groups_skip_frozen_and_exempt_norms_from_decay():
    network = get_network_from_plans(NETWORK_CLASS_NAME, _arch_kwargs(), [], 3, 2, deep_supervision=False)
    network.model.freeze_backbone()
    groups = build_param_groups(network, 1e-4, 0.05)
    params = [p for g in groups for p in g["params"]]
    assert all(p.requires_grad for p in params)
    assert sum(p.numel() for p in params) == sum(p.numel() for p in network.parameters() if p.requires_grad)
    no_decay = next(g for g in groups if g["weight_decay"] == 0.0)
    assert all(p.ndim <= 1 for p in no_decay["params"])


# -- schedule --------------------------------------------------------------------------


def test_warmup_then_poly_in_one_scheduler_with_resumable_state():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [param]}], lr=1e-3)
    scheduler = WarmupPolyLR(optimizer, warmup_epochs=4, num_epochs=20)
    lrs = []
    for epoch in range(20):
        scheduler.step(epoch)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4] == pytest.approx(1e-3) and all(a > b for a, b in zip(lrs[4:], lrs[5:]))
    state = scheduler.state_dict()
    fresh = WarmupPolyLR(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3), 4, 20)
    fresh.load_state_dict(state)
    assert fresh.last_epoch == 19 and fresh.get_last_lr() == pytest.approx([lrs[-1]])


# -- plans -----------------------------------------------------------------------------


def _minimal_plans(tmp_path, monkeypatch, patch=(100, 90), schemes=("ZScoreNormalization",), median=None):
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "res"))
    folder = tmp_path / "pre" / "Dataset123_Tiny"
    folder.mkdir(parents=True)
    plans = {"dataset_name": "Dataset123_Tiny", "plans_name": "nnUNetPlans", "configurations": {
        "2d": {"patch_size": list(patch), "batch_size": 12, "normalization_schemes": list(schemes),
               "data_identifier": "nnUNetPlans_2d"}}}
    if median is not None:  # what nnU-Net's planner stores for the 2d configuration
        plans["configurations"]["2d"]["median_image_size_in_voxels"] = list(median)
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    return folder / "nnUNetPlans.json"


def test_plan_snaps_patch_to_the_backbone_patch_and_sets_batch(tmp_path, monkeypatch):
    path = _minimal_plans(tmp_path, monkeypatch)  # no median image size: sides are rounded down
    name = plan(123, load_config({"model": {**TINY_MODEL, "pretrained": True}}), verbose=False)
    assert name == "2d_segformer_dinov2_small"
    conf = json.loads(path.read_text())["configurations"][name]
    assert conf["patch_size"] == [98, 84]  # multiples of 14
    assert conf["architecture"]["arch_kwargs"]["input_normalization"] == "none"  # z-scored channels
    assert conf["architecture"]["arch_kwargs"]["lora"] == {"r": 8, "alpha": 16.0, "dropout": 0.05,
                                                          "target_modules": ["qkv"]}

    # The batch is scaled from the documented reference: a ViT-L trains 8 images of 1024 tokens
    # (512x512 at patch 16) on a 24 GiB card; a ViT-S (the size in the model name) takes 4x as
    # many tokens. It never exceeds nnU-Net's own 2d batch (12 here) and never drops below 2.
    def batch_size(model: dict, patch_size: list[int]) -> int:
        config = load_config({"model": model, "train": {"patch_size": patch_size}, "lora": {"enabled": False}})
        planned_name = plan(123, config, verbose=False)
        planned = json.loads(path.read_text())["configurations"][planned_name]
        assert planned["patch_size"] == patch_size  # already multiples of 14: the tokens below are exact
        return planned["batch_size"]

    vit_l = {**TINY_MODEL, "name": "segformer_dinov2_large"}
    assert batch_size(vit_l, [448, 448]) == 8  # 32 x 32 = 1024 tokens: the reference point itself
    assert batch_size(vit_l, [448, 896]) == 4  # twice the tokens, half the batch
    assert batch_size(TINY_MODEL, [784, 784]) == 10  # 56 x 56 = 3136 tokens: 4 * 8 * 1024 // 3136
    assert conf["batch_size"] == 12  # 7 x 6 = 42 tokens would allow 780: capped at nnU-Net's 2d batch
    assert batch_size(TINY_MODEL, [1960, 1960]) == 2  # 140 x 140 tokens would allow 1: raised to 2


def test_plan_without_nnunet_plans_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    (tmp_path / "Dataset321_Unplanned").mkdir()  # fingerprint only, say: no plans yet
    with pytest.raises(FileNotFoundError, match="nnUNetv2_plan_and_preprocess -d 321"):
        plan(321, load_config())


def test_untrained_configuration_may_be_replanned(tmp_path, monkeypatch):
    path = _minimal_plans(tmp_path, monkeypatch, schemes=("RGBTo01Normalization",) * 3)
    plan(123, load_config({"model": TINY_MODEL, "lora": {"enabled": False}}), verbose=False)
    plan(123, load_config({"model": {**TINY_MODEL, "decoder_hidden_size": 16}, "lora": {"enabled": False}}),
         verbose=False)
    conf = json.loads(path.read_text())["configurations"]["2d_segformer_dinov2_small"]
    assert conf["architecture"]["arch_kwargs"]["model_kwargs"]["decoder_hidden_size"] == 16
    assert conf["architecture"]["arch_kwargs"]["input_normalization"] == "backbone"


def test_plan_rounds_the_patch_up_when_the_images_allow_it_and_says_so(tmp_path, monkeypatch, capsys):
    """nnU-Net's 40x40 on a patch-14 backbone: 42 where the median image is at least 42 px, else 28."""
    path = _minimal_plans(tmp_path, monkeypatch, patch=(40, 40), median=(48, 41))
    no_lora = {"model": TINY_MODEL, "lora": {"enabled": False}}
    name = plan(123, load_config(no_lora), verbose=False)
    assert json.loads(path.read_text())["configurations"][name]["patch_size"] == [42, 28]
    assert ("Note: patch size [40, 40] -> [42, 28], a multiple of the backbone's patch size 14 "
            "(side 1 rounded down to 28, not up to 42: the median image is 41 px)") in capsys.readouterr().out
    plan(123, load_config({**no_lora, "train": {"patch_size": [56, 28]}}), verbose=False)
    assert json.loads(path.read_text())["configurations"][name]["patch_size"] == [56, 28]
    assert "Note: patch size" not in capsys.readouterr().out  # nothing changed, nothing said


def test_plan_refuses_lora_on_a_backbone_without_weights_and_writes_nothing(tmp_path, monkeypatch):
    path = _minimal_plans(tmp_path, monkeypatch)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=r"lora\.enabled is true, but the backbone gets no weights .*"
                                          r"Set model\.pretrained: true or model\.checkpoint_path: .*"
                                          r"or set lora\.enabled: false"):
        plan(123, load_config({"model": TINY_MODEL}), verbose=False)  # pretrained: false, LoRA on by default
    assert path.read_bytes() == before
    # a local backbone file is weights too (plan builds nothing from it)
    lora_on_file = {**TINY_MODEL, "checkpoint_path": str(tmp_path / "backbone.pth")}
    assert plan(123, load_config({"model": lora_on_file}), verbose=False) == "2d_segformer_dinov2_small"


@pytest.mark.parametrize("kwargs, message", [
    ({"backbone_kwarg": {"depth": 2}}, r"unknown keyword argument 'backbone_kwarg' \(did you mean 'backbone_kwargs'\?\)"),
    ({"backbone_kwargs": {**TINY_VIT, "depht": 2}},
     r"backbone_kwargs\['depht'\] is not an argument of dinov2_small's timm ViT \(VisionTransformer.*"
     r"\(did you mean 'depth'\?\); it accepts: img_size, patch_size"),
    ({"backbone_kwargs": dict(TINY_VIT), "dropuot": 0.1}, r"'dropuot' \(did you mean 'dropout'\?\)"),  # the head's
])
def test_plan_refuses_model_kwargs_the_model_does_not_take_and_writes_nothing(tmp_path, monkeypatch, kwargs, message):
    path = _minimal_plans(tmp_path, monkeypatch)
    before = path.read_bytes()
    model = {**TINY_MODEL, "kwargs": kwargs}
    with pytest.raises(ConfigError, match=r"the model settings do not fit segformer_dinov2_small: .*" + message):
        plan(123, load_config({"model": model, "lora": {"enabled": False}}), verbose=False)
    assert path.read_bytes() == before


def test_plan_command_refuses_a_keyword_typo_in_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from nnunet_bridge.cli import main

    path = _minimal_plans(tmp_path, monkeypatch)
    before = path.read_bytes()
    config = tmp_path / "typo.yaml"
    config.write_text(json.dumps({"model": {**TINY_MODEL, "kwargs": {"backbone_kwarg": {"depth": 2}}},
                                  "lora": {"enabled": False}}))  # JSON is YAML
    assert main(["plan", "123", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "unknown keyword argument 'backbone_kwarg' (did you mean 'backbone_kwargs'?)" in err
    assert path.read_bytes() == before


# -- CLI -------------------------------------------------------------------------------


def test_ext_trainer_path_keeps_user_entries(monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", "/my/trainers")
    value = ensure_ext_trainer_path()
    assert value.split(":") == ["/my/trainers", EXT_TRAINER_DIR]
    assert ensure_ext_trainer_path() == value


def test_nnunet_finds_the_bridge_trainer_by_name(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_bridge.trainer import nnUNetTrainer_segformer, nnUNetTrainerSegZoo

    monkeypatch.setenv("nnUNet_extTrainer", EXT_TRAINER_DIR)
    assert recursive_find_trainer_class_by_name("nnUNetTrainerSegZoo") is nnUNetTrainerSegZoo
    assert recursive_find_trainer_class_by_name("nnUNetTrainer_segformer") is nnUNetTrainer_segformer


@pytest.mark.parametrize("command", ["plan", "train", "predict", "compare", "env", "demo"])
def test_every_command_has_help(command):
    result = subprocess.run([sys.executable, "-m", "nnunet_bridge.cli", command, "-h"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: segzoo-nnunet " + command in result.stdout


def test_env_prints_the_export_line():
    result = subprocess.run([sys.executable, "-m", "nnunet_bridge.cli", "env"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == f"export nnUNet_extTrainer={EXT_TRAINER_DIR}"


def test_lora_kwargs_reach_create_model():
    from nnunet_bridge.network import build_zoo_network

    config = load_config({"model": TINY_MODEL, "lora": {"enabled": True, "r": 4}})
    kwargs = arch_kwargs_from_config(config, "backbone")
    network = build_zoo_network(3, 2, **kwargs)
    assert any("lora_" in key for key in network.state_dict())
    assert network.model.model_kwargs["lora"]["r"] == 4
    trainable = {n for n, p in network.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or not n.startswith("model.backbone.") for n in trainable)


def test_head_defaults_apply_when_the_config_leaves_them_unset():
    from nnunet_bridge.network import build_zoo_network

    tiny = {k: v for k, v in TINY_MODEL.items() if k != "decoder_hidden_size"}
    kwargs = arch_kwargs_from_config(load_config({"model": {**tiny, "name": "upernet_dinov2_small"},
                                                  "lora": {"enabled": False}}), "backbone")
    assert "decoder_hidden_size" not in kwargs["model_kwargs"] and "neck" not in kwargs["model_kwargs"]
    network = build_zoo_network(3, 2, **kwargs)
    assert network.model.decode_head.classifier.in_channels == 512  # UperNet's own width, not SegFormer's 256


def test_shipped_yaml_is_the_generated_template_of_the_dataclass_defaults():
    """The dataclasses hold the defaults; configs/default.yaml is generated from them, not edited."""
    from omegaconf import OmegaConf

    from nnunet_bridge.config import DEFAULT_CONFIG_PATH, SegZooNNUNetConfig, config_to_dict, default_config_yaml

    assert DEFAULT_CONFIG_PATH.read_text() == default_config_yaml(), (
        "nnunet_bridge/configs/default.yaml is stale; regenerate it: python -c \"from nnunet_bridge.config import "
        "default_config_yaml as d; print(d(), end='')\" > nnunet_bridge/configs/default.yaml")
    from_dataclasses = OmegaConf.to_container(OmegaConf.structured(SegZooNNUNetConfig))
    assert OmegaConf.to_container(OmegaConf.load(DEFAULT_CONFIG_PATH)) == from_dataclasses
    assert config_to_dict(load_config(DEFAULT_CONFIG_PATH)) == config_to_dict(load_config())  # a usable template


# -- trainer lookup --------------------------------------------------------------------


def test_bridge_trainers_are_handed_to_nnunet_without_its_folder_search():
    import nnunetv2.inference.predict_from_raw_data as predict_module
    import nnunetv2.run.run_training as training_module

    from nnunet_bridge.trainer import nnUNetTrainerSegZoo
    from nnunet_bridge.trainer_lookup import bridge_trainers_resolved

    nnunet_search = training_module.recursive_find_trainer_class_by_name
    with bridge_trainers_resolved():
        for module in (training_module, predict_module):
            assert module.recursive_find_trainer_class_by_name("nnUNetTrainerSegZoo") is nnUNetTrainerSegZoo
    assert training_module.recursive_find_trainer_class_by_name is nnunet_search  # restored


# nnU-Net's real search, its retry and an unknown name: tests/test_nnunet_cli_errors.py


def test_lora_compatibility_spellings_are_aliases_and_both_at_once_is_an_error(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("lora:\n  lora_alpha: 32\n  lora_dropout: 0.1\n")
    config = load_config(old)
    assert config.lora.alpha == 32 and config.lora.dropout == 0.1
    assert arch_kwargs_from_config(config, "none")["lora"] == dict(r=8, alpha=32.0, dropout=0.1,
                                                                   target_modules=["qkv"])
    both = tmp_path / "both.yaml"
    both.write_text("lora:\n  alpha: 8\n  lora_alpha: 32\n")
    with pytest.raises(ConfigError, match=r"lora\.lora_alpha and lora\.alpha are the same setting"):
        load_config(both)


def test_plan_refuses_lora_on_mit_and_keeps_mits_own_drop_path_default(tmp_path, monkeypatch):
    from tests.tiny_models import TINY_MIT

    path = _minimal_plans(tmp_path, monkeypatch, schemes=("RGBTo01Normalization",) * 3)
    mit = {"name": "segformer_mit_b0", "pretrained": False, "kwargs": dict(TINY_MIT)}
    with pytest.raises(ConfigError, match=r"lora\.enabled is true, but segformer_mit_b0 takes no LoRA.*"
                                          r"Set lora\.enabled: false"):
        plan(123, load_config({"model": mit}), verbose=False)  # the default has LoRA on
    name = plan(123, load_config({"model": mit, "lora": {"enabled": False}}), verbose=False)
    arch = json.loads(path.read_text())["configurations"][name]["architecture"]["arch_kwargs"]
    assert "drop_path_rate" not in arch["model_kwargs"]  # MiT's own 0.1, not the ViT families' 0
    network = get_network_from_plans(NETWORK_CLASS_NAME, arch, [], 3, 2, allow_init=True, deep_supervision=False)
    assert max(m.drop_prob for m in network.modules() if hasattr(m, "drop_prob")) > 0


def test_eomt_network_from_plans_predicts_per_pixel_and_anneals_through_the_wrapper():
    from tests.tiny_models import TINY_EOMT

    eomt = {"name": "eomt_dinov3_small", "pretrained": False, "kwargs": dict(TINY_EOMT)}
    kwargs = arch_kwargs_from_config(load_config({"model": eomt, "lora": {"enabled": False}}), "backbone")
    assert "decoder_hidden_size" not in kwargs["model_kwargs"] and "neck" not in kwargs["model_kwargs"]
    network = get_network_from_plans(NETWORK_CLASS_NAME, kwargs, [], 3, 4, deep_supervision=False)
    network.model.set_mask_annealing(1.0)
    with torch.no_grad():
        logits = network.eval()(torch.rand(2, 3, 40, 56))
    assert logits.shape == (2, 4, 40, 56)  # what nnU-Net's predictor softmaxes, as for every zoo model
    torch.testing.assert_close(logits.exp().sum(1), torch.ones(2, 40, 56))
