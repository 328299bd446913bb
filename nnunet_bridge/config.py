"""The bridge's configuration: OmegaConf structured dataclasses (model / lora / train).

A run's configuration is the package default (``configs/default.yaml``) merged with the
configuration stored in the dataset's plans by ``segzoo-nnunet plan`` and then with the
user's YAML. Unknown keys are an error naming the key, so a typo never silently trains
with a default.

Field names keep the compatibility names (``model.backbone``, ``backbone_size``,
``decoder_hidden_size``, ``checkpoint_path``; ``lora.enabled``, ``r``, ``target_modules``;
``train.initial_lr``, ``weight_decay``, ``gradient_clip``). LoRA's scale and dropout are
``lora.alpha`` / ``lora.dropout``, as in ``create_model(..., lora=dict(r=, alpha=, dropout=))``;
the compatibility spellings ``lora.lora_alpha`` / ``lora.lora_dropout`` are read as aliases. Training defaults follow nnU-Net's own transformer trainer (Primus:
AdamW, weight decay 5e-2, betas 0.9/0.98, clip 1.0, linear warm-up then poly decay)
instead of the U-Net-style values of the fork segzoo replaces (lr 1e-3, wd 3e-5, clip 12), because
those were tuned for SGD on convolutional nets and destabilise pretrained ViTs. The
learning rate defaults to 1e-4 for pretrained backbones and to Primus' 3e-4 from scratch.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

__all__ = [
    "ModelSection",
    "LoraSection",
    "TrainSection",
    "SegZooNNUNetConfig",
    "ConfigError",
    "DEFAULT_CONFIG_PATH",
    "load_config",
    "config_to_dict",
    "resolved_initial_lr",
    "zoo_model_name",
]

DEFAULT_CONFIG_PATH = Path(__file__).parent / "configs" / "default.yaml"
LR_PRETRAINED = 1e-4  # fine-tuning a pretrained ViT
LR_FROM_SCRATCH = 3e-4  # nnU-Net's Primus trainer
# compatibility spellings read as the zoo's names: section -> {alias: field}
ALIASES = {"lora": {"lora_alpha": "alpha", "lora_dropout": "dropout"}}


def _field(default: Any = MISSING, help: str = "", factory: Any = MISSING) -> Any:
    """A dataclass field whose ``help`` (in ``metadata``) documents it: the configuration
    reference in the docs is generated from these (``nnunet_bridge.docs_config``)."""
    return field(default=default, default_factory=factory, metadata={"help": help})


@dataclass
class ModelSection:
    """Which zoo model to build and where its backbone weights come from."""

    name: str = _field("", "registered zoo name, optionally with a tag; \"\" -> `{head}_{backbone}_{backbone_size}`")
    head: str = _field("segformer", "segformer | upernet | mask2former | dpt | eomt (used when `name` is \"\")")
    backbone: str = _field("dinov3", "dinov3 | dinov2 | dinov2_reg4 | retfound | retfound_dinov2 | visionfm")
    backbone_size: str = _field("large", "small | base | large | giant (the sizes the backbone family has)")
    decoder_hidden_size: Optional[int] = _field(None, "decode head width (SegFormer's MLP, UperNet's channels, DPT's "
                                                      "fusion blocks); null -> the head's own default (SegFormer 256, "
                                                      "UperNet 512, DPT 256)")
    neck: Optional[str] = _field(None, "pyramid (strides 4/8/16/32) | dpt (the same strides, DPT's layers) | "
                                       "none (four same-stride maps); null -> the model's default (dpt for DPT, "
                                       "pyramid for the other ViT models; MiT takes none)")
    pretrained: bool = _field(True, "load the backbone's published weights in the trainer (never at inference)")
    pretrained_tag: str = _field("", "weights tag, e.g. \"lvd1689m\", \"sat493m\"; \"\" -> the model's default tag")
    checkpoint_path: str = _field("", "local backbone weights in their published layout (RETFound, VisionFM, "
                                      "Meta's own DINOv3 files); wins over `pretrained`")
    drop_path_rate: Optional[float] = _field(None, "stochastic depth rate of the encoder blocks; null -> the "
                                                   "model's default (0 for the ViT families, 0.1 for MiT)")
    grad_checkpointing: bool = _field(False, "timm's activation checkpointing in the backbone: less memory, more time")
    input_normalization: str = _field("auto", "auto | backbone | none: whether the network applies the backbone's "
                                              "mean/std (auto: only when every channel is scaled to [0, 1])")
    kwargs: dict = _field(help="further `segzoo.create_model` kwargs, e.g. `{backbone_kwargs: {depth: 2}}`", factory=dict)


@dataclass
class LoraSection:
    """peft LoRA on the backbone; the neck and head stay fully trainable."""

    enabled: bool = _field(True, "wrap the backbone with LoRA adapters and freeze its base weights")
    r: int = _field(8, "adapter rank")
    alpha: float = _field(16.0, "LoRA scale numerator (updates are scaled by alpha / r); alias lora_alpha")
    target_modules: List[str] = _field(help="linear layers inside each ViT block to adapt (qkv, proj, fc1, fc2)",
                                       factory=lambda: ["qkv"])
    dropout: float = _field(0.05, "dropout on the adapter input; alias lora_dropout")


@dataclass
class TrainSection:
    """Optimiser, schedule and loop lengths (nnU-Net's names where it has one)."""

    initial_lr: Optional[float] = _field(None, "null -> 1e-4 with pretrained weights, 3e-4 from scratch")
    weight_decay: float = _field(5e-2, "AdamW weight decay on weight matrices (none on norms, biases, embeddings)")
    layer_decay: float = _field(1.0, "per-block LR factor through the ViT (e.g. 0.75 to fine-tune pretrained); 1 = off")
    head_lr_mult: float = _field(1.0, "LR multiplier of neck and head relative to initial_lr")
    betas: List[float] = _field(help="AdamW betas (Primus)", factory=lambda: [0.9, 0.98])
    gradient_clip: float = _field(1.0, "max global gradient norm; 0 disables clipping")
    warmup_epochs: int = _field(50, "linear warm-up epochs, then poly decay (poly_exponent) to num_epochs")
    poly_exponent: float = _field(0.9, "exponent of the poly decay after warm-up")
    num_epochs: int = _field(1000, "training epochs")
    num_iterations_per_epoch: int = _field(250, "training iterations per epoch")
    num_val_iterations_per_epoch: int = _field(50, "validation iterations per epoch (the pseudo-Dice curve)")
    batch_size: Optional[int] = _field(None, "null -> chosen for the model by `segzoo-nnunet plan`")
    patch_size: Optional[List[int]] = _field(None, "[height, width]; null -> nnU-Net's 2d patch size snapped to "
                                                   "a multiple of the backbone patch size")
    oversample_foreground_percent: float = _field(0.33, "share of each batch forced to contain foreground (nnU-Net)")
    save_every: int = _field(5, "epochs between checkpoint_latest.pth writes (atomic)")
    compile_backend: str = _field("inductor", "torch.compile backend of the regional compile (on by default on "
                                              "CUDA; nnUNet_compile=f turns it off); aot_eager rules inductor out")


@dataclass
class SegZooNNUNetConfig:
    """Root configuration (compatibility name ``SegFormernnUNetConfig``, generalised to the zoo)."""

    model: ModelSection = _field(help="which zoo model and which backbone weights", factory=ModelSection)
    lora: LoraSection = _field(help="peft LoRA on the backbone", factory=LoraSection)
    train: TrainSection = _field(help="optimiser, schedule, loop lengths, batch and patch size", factory=TrainSection)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the fix."""


Source = Union[str, Path, dict, DictConfig, None]


def load_config(*sources: Source) -> DictConfig:
    """Merge the package defaults with ``sources`` (YAML paths, dicts), later ones winning.

    Returns a validated structured ``DictConfig``. Unknown keys and wrong types raise
    :class:`ConfigError` naming the key and the file it came from.
    """
    config = OmegaConf.structured(SegZooNNUNetConfig)
    for source in (DEFAULT_CONFIG_PATH, *sources):
        if source is None:
            continue
        where, values = _read(source)
        _resolve_aliases(values, where)
        try:
            config = OmegaConf.merge(config, values)
        except (ConfigKeyError, ValidationError) as err:
            key = getattr(err, "full_key", None) or str(err)
            raise ConfigError(
                f"{where}: invalid configuration key {key!r}: {getattr(err, 'msg', err)}. "
                f"Valid sections/keys are:\n{OmegaConf.to_yaml(OmegaConf.structured(SegZooNNUNetConfig))}"
            ) from None
    _fill_name_parts(config)
    _validate(config)
    return config


def config_to_dict(config: DictConfig) -> dict[str, Any]:
    """Plain JSON-able dict (what checkpoints, plans and the output folder store)."""
    return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]


def zoo_model_name(config: DictConfig) -> str:
    """The registered zoo name: ``model.name`` or ``{head}_{backbone}_{backbone_size}``."""
    return config.model.name or f"{config.model.head}_{config.model.backbone}_{config.model.backbone_size}"


def resolved_initial_lr(config: DictConfig) -> float:
    """``train.initial_lr``, or the default for pretrained / from-scratch backbones."""
    if config.train.initial_lr is not None:
        return float(config.train.initial_lr)
    uses_weights = config.model.pretrained or bool(config.model.checkpoint_path)
    return LR_PRETRAINED if uses_weights else LR_FROM_SCRATCH


def _read(source: Source) -> tuple[str, DictConfig]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"configuration file {str(path)!r} does not exist")
        values = OmegaConf.load(path)
        if not isinstance(values, DictConfig):
            raise ConfigError(f"{path}: expected a mapping with sections model / lora / train, got a list")
        return str(path), values
    if isinstance(source, DictConfig):
        return "configuration", source
    if isinstance(source, dict):
        return "configuration", OmegaConf.create(source)
    raise TypeError(f"configuration source must be a YAML path or a dict, got {type(source).__name__}")


def _resolve_aliases(values: DictConfig, where: str) -> None:
    """Rename compatibility keys to the zoo's in place; both spellings at once is an error."""
    for section, aliases in ALIASES.items():
        part = values.get(section)
        if not isinstance(part, DictConfig):
            continue
        for alias, name in aliases.items():
            if alias not in part:
                continue
            if name in part:
                raise ConfigError(f"{where}: {section}.{alias} and {section}.{name} are the same setting; keep "
                                  f"{section}.{name} only")
            part[name] = part.pop(alias)


def _fill_name_parts(config: DictConfig) -> None:
    """A set ``model.name`` wins: head / backbone / backbone_size are filled in from it, so the
    stored config never shows a backbone the model does not have."""
    name = config.model.name.split(".")[0]
    parts = name.split("_")
    if name and len(parts) >= 3:
        config.model.head, config.model.backbone, config.model.backbone_size = parts[0], "_".join(parts[1:-1]), parts[-1]


def _validate(config: DictConfig) -> None:
    train, lora, model = config.train, config.lora, config.model
    if train.num_epochs < 1:
        raise ConfigError(f"train.num_epochs must be >= 1, got {train.num_epochs}")
    if not 0 <= train.warmup_epochs < train.num_epochs:
        raise ConfigError(
            f"train.warmup_epochs ({train.warmup_epochs}) must be in [0, train.num_epochs) "
            f"(num_epochs={train.num_epochs}); lower it for short runs"
        )
    for key in ("num_iterations_per_epoch", "num_val_iterations_per_epoch", "save_every"):
        if train[key] < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {train[key]}")
    if train.batch_size is not None and train.batch_size < 1:
        raise ConfigError(f"train.batch_size must be >= 1 (or null to let `plan` choose), got {train.batch_size}")
    if train.patch_size is not None and (len(train.patch_size) != 2 or min(train.patch_size) < 1):
        raise ConfigError(f"train.patch_size must be two positive ints [height, width], got {list(train.patch_size)}")
    if len(train.betas) != 2:
        raise ConfigError(f"train.betas must be two floats, got {list(train.betas)}")
    if train.gradient_clip < 0:
        raise ConfigError(f"train.gradient_clip must be >= 0 (0 disables it), got {train.gradient_clip}")
    if lora.enabled and (lora.r < 1 or not lora.target_modules):
        raise ConfigError("lora.r must be >= 1 and lora.target_modules non-empty when lora.enabled is true")
    if model.input_normalization not in ("auto", "backbone", "none"):
        raise ConfigError(
            f"model.input_normalization must be auto, backbone or none, got {model.input_normalization!r}"
        )
    if "__" in zoo_model_name(config):
        raise ConfigError(f"model name {zoo_model_name(config)!r} must not contain '__' (nnU-Net splits folder names on it)")
