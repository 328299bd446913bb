"""nnUNetTrainerSegZoo: nnU-Net's trainer with only what a ViT zoo model needs changed.

The network comes from the plans (``segzoo-nnunet plan``), so stock ``nnUNetv2_train``
and ``nnUNetv2_predict`` work with this trainer. Differences from ``nnUNetTrainer``:
no deep supervision (also not switched back on around final validation); AdamW with
linear warm-up then poly decay (nnU-Net's Primus recipe); LoRA-aware parameter groups;
configurable gradient clipping; the loss is nnU-Net's ``DC_and_CE_loss`` for per-pixel
heads and the model's own ``compute_loss`` for set-prediction heads (Mask2Former);
pretrained weights loaded in ``initialize`` (never at inference); the resolved config
in every checkpoint and in the output folder; atomic checkpoints; a checkpoint whose
model layout differs from the configuration is an error naming the differing keys;
regional ``torch.compile`` (see :func:`segzoo.compile_model`) instead of nnU-Net's
whole-network compile, with a fall-back to eager if compiling fails.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Callable, Union

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from omegaconf import OmegaConf
from torch import autocast, nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from segzoo import compile_model, is_compiled, uncompile_model

from .config import ConfigError, config_to_dict, load_config, resolved_initial_lr
from .network import ZooNetwork, create_zoo_model
from .optim import WarmupPolyLR, build_param_groups
from .throughput import LogsTrainingThroughput
from .plans import NETWORK_CLASS_NAME, diff_dicts, stored_config

__all__ = [
    "nnUNetTrainerSegZoo",
    "nnUNetTrainer_segformer",
    "nnUNetTrainerNoDeepSupervision_segformer",
    "CONFIG_ENV",
    "PRETRAINED_WEIGHTS_ENV",
    "CheckpointLayoutError",
    "COMPILE_ENV",
]

CONFIG_ENV = "SEGZOO_NNUNET_CONFIG"  # a YAML whose train section overrides the planned one
PRETRAINED_WEIGHTS_ENV = "SEGZOO_NNUNET_PRETRAINED_WEIGHTS"  # an nnU-Net checkpoint of the same zoo model
CONFIG_FILENAME = "segzoo_config.yaml"
COMPILE_ENV = "nnUNet_compile"  # nnU-Net's own switch: t/true/1 or f/false/0


class CheckpointLayoutError(RuntimeError):
    """A checkpoint whose network does not fit the configuration's model (names the keys)."""


class nnUNetTrainerSegZoo(LogsTrainingThroughput, nnUNetTrainer):
    """Trains the zoo model that the configuration's plans name (see ``nnunet_bridge.plans``)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        self._weights_from_checkpoint = False  # set by load_checkpoint (--c, --val)
        self._compiled_steps_checked: set[str] = set()  # steps that ran compiled once without error
        super().__init__(plans, configuration, fold, dataset_json, device)
        conf = self.configuration_manager.configuration
        arch = conf.get("architecture", {})
        if arch.get("network_class_name") != NETWORK_CLASS_NAME or stored_config(conf) is None:
            raise ConfigError(
                f"configuration {configuration!r} is not a segzoo configuration (its network is "
                f"{arch.get('network_class_name')!r}); add one with `segzoo-nnunet plan DATASET --model NAME` "
                f"and train that (e.g. 2d_segformer_dinov3_large)"
            )
        self.segzoo_arch: dict[str, Any] = arch["arch_kwargs"]
        self.segzoo_config = load_config(stored_config(conf), os.environ.get(CONFIG_ENV) or None)
        self._check_config_matches_plans(conf)
        train = self.segzoo_config.train
        self.enable_deep_supervision = False
        self.initial_lr = resolved_initial_lr(self.segzoo_config)
        self.weight_decay = float(train.weight_decay)
        self.num_epochs = int(train.num_epochs)
        self.num_iterations_per_epoch = int(train.num_iterations_per_epoch)
        self.num_val_iterations_per_epoch = int(train.num_val_iterations_per_epoch)
        self.oversample_foreground_percent = float(train.oversample_foreground_percent)
        self.save_every = int(train.save_every)
        if train.batch_size is not None:
            conf["batch_size"] = int(train.batch_size)

    # -- network ---------------------------------------------------------------------------

    def initialize(self) -> None:
        super().initialize()
        self._load_initial_weights()
        model = self._bare_network().model
        if hasattr(model, "print_trainable_parameters"):
            model.print_trainable_parameters(detailed=True)

    # -- compilation -----------------------------------------------------------------------

    def _do_i_compile(self) -> bool:
        """nnU-Net's whole-network ``torch.compile`` stays off: :meth:`compile_network` compiles
        the zoo model regionally instead (each encoder block, then neck and head)."""
        return False

    def wants_compile(self) -> bool:
        """As nnU-Net: on by default on CUDA, ``nnUNet_compile=f`` turns it off. Unlike nnU-Net,
        ``nnUNet_compile=t`` also compiles on the CPU (zoo models compile there)."""
        setting = os.environ.get(COMPILE_ENV)
        if setting is not None and setting.strip():
            return setting.strip().lower() in ("true", "1", "t")
        return self.device.type == "cuda"

    def compile_network(self) -> None:
        """Compile the zoo model in place, regionally; called once training starts, so
        ``--val`` and ``nnUNetv2_predict`` stay eager and nothing compiles that never trains."""
        backend = str(self.segzoo_config.train.compile_backend)
        if backend not in torch._dynamo.list_backends(exclude_tags=()):
            raise ConfigError(
                f"train.compile_backend {backend!r} is not a torch.compile backend; "
                f"choose one of {torch._dynamo.list_backends()} (or set {COMPILE_ENV}=f)"
            )
        compile_model(self._bare_network().model, "regional", backend=backend)
        self.print_to_log_file(
            f"Compiling the zoo model regionally (torch.compile, backend {backend}): each encoder block, "
            f"then neck and head. {COMPILE_ENV}=f turns this off"
        )

    def _with_eager_fallback(self, what: str, step: Callable[..., Any], *args: Any) -> Any:
        """Run ``step``; if the first compiled run of this kind of step fails, warn once, make
        the model eager again and rerun it. An error that eager also raises is not compile's."""
        model = self._bare_network().model
        if what in self._compiled_steps_checked or not is_compiled(model):
            return step(*args)
        try:
            result = step(*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure; a real bug re-raises eagerly below
            first_line = (str(err).strip().splitlines() or [""])[0][:300]
            message = (f"torch.compile failed at the first {what} ({type(err).__name__}: {first_line}); "
                       f"training continues eager. Set {COMPILE_ENV}=f to skip compiling")
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            self.print_to_log_file(message)
            uncompile_model(model)
            self.optimizer.zero_grad(set_to_none=True)
            result = step(*args)
        self._compiled_steps_checked.add(what)
        return result

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """Zoo models have one output; nnU-Net's switch (also flipped around validation) is a no-op."""

    # -- optimisation ----------------------------------------------------------------------

    def configure_optimizers(self):
        train = self.segzoo_config.train
        groups = build_param_groups(self._bare_network(), self.initial_lr, self.weight_decay,
                                    float(train.layer_decay), float(train.head_lr_mult))
        optimizer = torch.optim.AdamW(
            groups, lr=self.initial_lr, weight_decay=self.weight_decay, betas=tuple(train.betas),
            fused=self.device.type == "cuda",
        )
        scheduler = WarmupPolyLR(optimizer, int(train.warmup_epochs), self.num_epochs, float(train.poly_exponent))
        return optimizer, scheduler

    def _build_loss(self):
        per_pixel_loss = super()._build_loss()  # DC_and_CE_loss (deep supervision is off)
        model = self._bare_network().model
        if hasattr(model, "compute_loss"):
            if self.label_manager.has_ignore_label:
                raise ConfigError(
                    f"{type(model).__name__} {getattr(model, 'model_name', '')} trains with its own set-prediction "
                    f"loss, which cannot leave out the dataset's ignore label ({self.label_manager.ignore_label}); "
                    "train a per-pixel head (segformer_* or upernet_*) on this dataset, or drop the ignore label"
                )
            return _ModelOwnLoss(model, per_pixel_loss)
        return per_pixel_loss

    def train_step(self, batch: dict) -> dict:
        return self._with_eager_fallback("training step", self._train_step, batch)

    def validation_step(self, batch: dict) -> dict:
        return self._with_eager_fallback("validation step", super().validation_step, batch)

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        self._with_eager_fallback("final validation", super().perform_actual_validation, save_probabilities)

    def _train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            loss = self.loss(self.network(data), target)
        clip = float(self.segzoo_config.train.gradient_clip)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(self.network.parameters(), clip)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(self.network.parameters(), clip)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}

    # -- run bookkeeping -------------------------------------------------------------------

    def on_train_start(self) -> None:
        self._check_results_plans_unchanged()
        super().on_train_start()
        if self.wants_compile():
            self.compile_network()
        if self.local_rank == 0:
            _write_atomic(os.path.join(self.output_folder, CONFIG_FILENAME),
                          OmegaConf.to_yaml(self.segzoo_config).encode())

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus the resolved config, the arch kwargs and the scheduler
        state, written to a temporary file and renamed, so a kill never leaves a torn file."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = {
            "network_weights": self._bare_network().state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "lr_scheduler_state": self.lr_scheduler.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            "segzoo_config": config_to_dict(self.segzoo_config),
            "segzoo_arch": self.segzoo_arch,
        }
        tmp = f"{filename}.{os.getpid()}.tmp"
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, filename)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        """Resume epoch, weights, optimizer, scheduler and logs (``--c``); refuses a checkpoint
        whose model layout differs from this configuration's, naming the differing keys."""
        if not self.was_initialized:
            self._weights_from_checkpoint = True  # no pretrained download just to overwrite it
            self.initialize()
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            # nnU-Net checkpoints hold numpy logs and the plans, so (as nnU-Net) not weights_only
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        weights = _strip_module_prefix(checkpoint["network_weights"])
        self._check_layout(weights, checkpoint, where=str(filename_or_checkpoint)[:300])
        self._bare_network().load_state_dict(weights)
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get(
            "inference_allowed_mirroring_axes", self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if checkpoint.get("lr_scheduler_state"):
            self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler_state"])
        if self.grad_scaler is not None and checkpoint.get("grad_scaler_state") is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
        saved_train = (checkpoint.get("segzoo_config") or {}).get("train")
        now_train = config_to_dict(self.segzoo_config)["train"]
        if saved_train and saved_train != now_train:
            self.print_to_log_file("Note: train settings differ from the checkpoint's: "
                                   + ", ".join(diff_dicts(saved_train, now_train)))

    # -- helpers ---------------------------------------------------------------------------

    def _bare_network(self) -> ZooNetwork:
        network = self.network.module if isinstance(self.network, DDP) else self.network
        return network._orig_mod if isinstance(network, OptimizedModule) else network

    def _load_initial_weights(self) -> None:
        """Weights a new run starts from: another run's checkpoint, else the backbone's published weights."""
        from_run = os.environ.get(PRETRAINED_WEIGHTS_ENV)
        if from_run:
            self._load_run_weights(from_run)
            return
        if self._weights_from_checkpoint:
            return  # --c / --val: the checkpoint provides every weight
        model_cfg = self.segzoo_config.model
        if not (model_cfg.pretrained or model_cfg.checkpoint_path):
            self.print_to_log_file("Training from random initialisation (model.pretrained is false)")
            return
        extra: dict[str, Any] = {"pretrained": bool(model_cfg.pretrained and not model_cfg.checkpoint_path)}
        if model_cfg.checkpoint_path:
            extra["checkpoint_path"] = str(model_cfg.checkpoint_path)
        arch = self.segzoo_arch
        try:
            reference = create_zoo_model(arch["model_name"], self.num_input_channels,
                                         self.label_manager.num_segmentation_heads,
                                         arch["model_kwargs"], arch["lora"], **extra)
        except Exception as err:
            raise RuntimeError(
                f"could not load the pretrained weights of {arch['model_name']} "
                f"({'checkpoint_path=' + str(model_cfg.checkpoint_path) if model_cfg.checkpoint_path else 'from the Hub'}): "
                f"{type(err).__name__}: {err}. Set model.pretrained: false to train from scratch, or "
                "model.checkpoint_path to a local file"
            ) from err
        self._bare_network().model.load_state_dict(reference.state_dict())
        self.print_to_log_file(f"Loaded pretrained backbone weights of {arch['model_name']}")

    def _load_run_weights(self, path: str) -> None:
        """``-pretrained_weights``: all weights of another run of the same zoo model; head layers
        whose shape differs (another number of classes) are re-initialised, and said so."""
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        weights = _strip_module_prefix(checkpoint["network_weights"])
        own = self._bare_network().state_dict()
        head = "model.decode_head."
        reinit = [k for k in own if k in weights and own[k].shape != weights[k].shape and k.startswith(head)]
        self._check_layout(weights, checkpoint, where=path, allowed=set(reinit))
        kept = {k: v for k, v in weights.items() if k not in reinit}
        self._bare_network().load_state_dict({**own, **kept})
        self.print_to_log_file(f"Loaded weights from {path}")
        if reinit:
            self.print_to_log_file(
                "Re-initialised (different number of classes): "
                + ", ".join(f"{k} {tuple(weights[k].shape)} -> {tuple(own[k].shape)}" for k in reinit))

    def _check_layout(self, weights: dict[str, torch.Tensor], checkpoint: dict, where: str,
                      allowed: set[str] = frozenset()) -> None:
        own = self._bare_network().state_dict()
        missing = sorted(set(own) - set(weights))
        unexpected = sorted(set(weights) - set(own))
        shapes = sorted(k for k in set(own) & set(weights) if k not in allowed and own[k].shape != weights[k].shape)
        if not (missing or unexpected or shapes):
            return
        lines = [f"checkpoint {where} does not fit configuration {self.configuration_name!r}:"]
        for label, keys in (("missing in checkpoint", missing), ("not in this model", unexpected)):
            if keys:
                lines.append(f"  {label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
        if shapes:
            lines.append("  different shapes: " + ", ".join(
                f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in shapes[:8]))
        if checkpoint.get("segzoo_arch") is not None:
            lines.append("  model settings that differ: "
                         + (", ".join(diff_dicts(checkpoint["segzoo_arch"], self.segzoo_arch)) or "none"))
        raise CheckpointLayoutError("\n".join(lines))

    def _check_config_matches_plans(self, conf: dict[str, Any]) -> None:
        """A train-time YAML may change the train section, not the planned model, LoRA or patch size."""
        planned = stored_config(conf)
        resolved = config_to_dict(self.segzoo_config)
        differences = [f"model.{d}" for d in diff_dicts(planned["model"], resolved["model"])]
        differences += [f"lora.{d}" for d in diff_dicts(planned["lora"], resolved["lora"])]
        if resolved["train"]["patch_size"] not in (None, conf["patch_size"]):
            differences.append(f"train.patch_size ({conf['patch_size']} -> {resolved['train']['patch_size']})")
        if differences:
            raise ConfigError(
                f"the configuration file ({os.environ.get(CONFIG_ENV)}) changes what configuration "
                f"{self.configuration_name!r} was planned with: {', '.join(differences)}. Plan it as a new "
                "configuration (`segzoo-nnunet plan DATASET --config FILE --name 2d_my_variant`)"
            )

    def _check_results_plans_unchanged(self) -> None:
        """nnU-Net rewrites the results folder's plans.json at every start; refuse to do that
        over a trained configuration whose architecture has changed since."""
        path = os.path.join(self.output_folder_base, "plans.json")
        if not os.path.isfile(path):
            return
        with open(path) as f:
            previous = json.load(f)["configurations"].get(self.configuration_name, {})
        old_arch = previous.get("architecture")
        if old_arch is not None and old_arch != self.configuration_manager.configuration["architecture"]:
            raise ConfigError(
                f"{self.output_folder_base} was trained with another architecture for {self.configuration_name!r}: "
                + ", ".join(diff_dicts(old_arch, self.configuration_manager.configuration["architecture"]))
                + ". Restore the plans or train under a new configuration name"
            )


class nnUNetTrainer_segformer(nnUNetTrainerSegZoo):
    """Compatibility name of :class:`nnUNetTrainerSegZoo` (docs/compatibility.md)."""


class nnUNetTrainerNoDeepSupervision_segformer(nnUNetTrainerSegZoo):
    """Compatibility name for the variant without deep supervision (which every zoo trainer is)."""


class _ModelOwnLoss:
    """Set-prediction models (Mask2Former) train with ``model.compute_loss``; in eval mode
    they return semantic logits, which get nnU-Net's per-pixel loss for the validation curve."""

    def __init__(self, model: nn.Module, per_pixel_loss: Any):
        self.model = model
        self.per_pixel_loss = per_pixel_loss

    def __call__(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        if isinstance(output, torch.Tensor):
            return self.per_pixel_loss(output, target)
        return self.model.compute_loss(output, target[:, 0].long())


def _strip_module_prefix(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[7:] if k.startswith("module.") else k: v for k, v in weights.items()}


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
