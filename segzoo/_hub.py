"""The Hugging Face Hub side, files only: download backbone weights, write / push / read saved models.

A saved model is a folder (or Hub repo) with ``config.json`` (registered name, the kwargs
that rebuild it, segzoo version, pretrained config), ``model.safetensors`` (every weight)
and a generated ``README.md`` model card. This module never builds a model: reloading is
:func:`segzoo.create_model`'s (``segzoo._factory``), which reads these files through it.

Downloads go through :func:`huggingface_hub.hf_hub_download`: the standard cache
(``HF_HOME`` / ``HF_HUB_CACHE``), its progress bars, tokens and ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import huggingface_hub
from huggingface_hub import errors as hf_errors
from safetensors.torch import save_model
from torch import nn

from ._version import __version__
from ._weights import CheckpointError
from ._registry import is_model, model_entry
from .lora import has_lora, save_lora_adapter

if TYPE_CHECKING:
    from ._pretrained import PretrainedCfg

__all__ = [
    "CONFIG_NAME",
    "HF_HUB_PREFIX",
    "WEIGHTS_NAME",
    "HubAccessError",
    "download_backbone_weights",
    "hub_download",
    "push_to_hub",
    "read_saved_config",
    "resolve_saved_file",
    "save_pretrained",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"
FORMAT_VERSION = 2  # 2: the weights' origin recorded (segzoo.description); 1 still loads
HF_HUB_PREFIX = "hf-hub:"


class HubAccessError(OSError):
    """A Hub file that cannot be fetched: gated, missing, or not cached while offline."""


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, adapter_only: bool = False) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card to ``save_directory``.

    The model must come from :func:`segzoo.create_model` (it records the registered name
    and kwargs that rebuild it). ``adapter_only=True`` (LoRA models) writes the adapters,
    neck and head instead of ``model.safetensors`` (:func:`segzoo.lora.save_lora_adapter`:
    megabytes instead of a whole ViT), recording which base weights they belong to; loading
    rebuilds that base. Returns the folder.
    """
    config = _model_config(model)
    if adapter_only and has_lora(model):
        _check_base_can_be_rebuilt(model)  # before anything is written
    folder = Path(save_directory).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    if adapter_only:
        save_lora_adapter(model, folder)  # refuses a model without LoRA
        config["adapter_only"] = True
    else:
        save_model(model, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "segzoo_model": config["architecture"]})
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=False) + "\n")
    (folder / MODEL_CARD_NAME).write_text(_model_card(config))
    return folder


def _check_base_can_be_rebuilt(model: nn.Module) -> None:
    """An adapter folder reloads by rebuilding its base; a randomly initialised one cannot be."""
    description = getattr(model, "description", None)
    if description is not None and not description.weights.is_reproducible:
        raise ValueError(
            "adapter_only=True saves the adapters without their base, and this model's backbone was randomly "
            "initialised (neither pretrained=True nor checkpoint_path=...), so the folder could never be reloaded; "
            "save the whole model (adapter_only=False), or build it on published or local weights"
        )


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    commit_message: str = "Upload segzoo model",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    adapter_only: bool = False,
) -> Any:
    """Save ``model`` (see :func:`save_pretrained`, ``adapter_only`` included) and upload it to the Hub repo ``repo_id``,
    creating the repo if needed. Returns huggingface_hub's ``CommitInfo``; the model then
    reloads with ``segzoo.create_model("hf-hub:" + repo_id)``."""
    api = huggingface_hub.HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="segzoo-push-") as tmp:
        save_pretrained(model, tmp, adapter_only=adapter_only)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
            repo_type="model",
        )


def download_backbone_weights(cfg: "PretrainedCfg") -> str:
    """Fetch one published weights file into the Hugging Face cache and return its path.

    timm-hosted tags use ``timm/{arch}.{tag}``'s ``model.safetensors``; others (RETFound)
    their own repo and file. Gated, missing and offline-uncached files raise
    :class:`HubAccessError` saying how to get access or use ``checkpoint_path``. ``cfg`` comes
    from :func:`~segzoo.backbones.published_weights_source`, which refuses files not on the Hub.
    """
    return hub_download(cfg.hf_hub_id, cfg.hf_hub_filename or WEIGHTS_NAME, what=f"{cfg.backbone} weights {cfg.tag!r}")


# -- helpers ----------------------------------------------------------------------------------


BACKBONE_FALLBACK = "or download the file yourself and pass checkpoint_path=... (pretrained=False)"


def hub_download(repo_id: str, filename: str, what: str, revision: str | None = None,
                 fallback: str = BACKBONE_FALLBACK) -> str:
    """``hf_hub_download`` with errors that say what to do (``fallback``: the way around the Hub).

    Without network (the Hub's host name does not resolve) the cache answers at once instead
    of after huggingface_hub's half a minute of retries.
    """
    page = f"{huggingface_hub.constants.ENDPOINT}/{repo_id}"
    unreachable = _hub_host_unresolvable()
    try:
        return huggingface_hub.hf_hub_download(
            repo_id, filename, revision=revision, library_name="segzoo", library_version=__version__,
            local_files_only=unreachable,
        )
    except hf_errors.GatedRepoError as err:
        raise HubAccessError(
            f"{what}: {repo_id} is a gated repository. Request access at {page} (accept its licence), then log "
            f"in with `hf auth login` or set HF_TOKEN, {fallback}"
        ) from err
    except hf_errors.RepositoryNotFoundError as err:
        raise HubAccessError(
            f"{what}: repository {repo_id} was not found on {huggingface_hub.constants.ENDPOINT} (or it is private "
            f"and your token has no access). Check the name, log in if it is private, {fallback}"
        ) from err
    except hf_errors.RevisionNotFoundError as err:
        raise HubAccessError(f"{what}: revision {revision!r} of {repo_id} does not exist ({page})") from err
    except hf_errors.EntryNotFoundError as err:
        if isinstance(err, hf_errors.LocalEntryNotFoundError):
            why = (f"{_hub_host()} does not resolve (no network?); set HF_HUB_OFFLINE=1 to use the cache only"
                   if unreachable else f"the Hub cannot be reached (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')})")
            raise HubAccessError(
                f"{what}: {repo_id}/{filename} is not in the Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) "
                f"and {why}. Download it once while online, {fallback}"
            ) from err
        raise HubAccessError(f"{what}: {repo_id} has no file {filename!r} ({page}); {fallback}") from err


def _hub_host() -> str:
    return urlparse(huggingface_hub.constants.ENDPOINT).hostname or ""


def _hub_host_unresolvable() -> bool:
    """True when not offline already and the Hub's host name does not resolve: no network."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return False  # huggingface_hub itself reads the cache only
    try:
        socket.getaddrinfo(_hub_host(), None)
    except (socket.gaierror, UnicodeError):
        return True
    return False


def resolve_saved_file(name: str, filename: str) -> tuple[str, str]:
    """Local path of one file of a saved model (downloaded for ``hf-hub:`` ids; a Hub
    snapshot keeps a repo's files in one folder) and a description of where it is."""
    if name.startswith(HF_HUB_PREFIX):
        repo_id, _, revision = name[len(HF_HUB_PREFIX):].partition("@")
        fallback = "or copy the saved model's folder here and pass its path to create_model"
        return hub_download(repo_id, filename, f"segzoo model {repo_id}", revision=revision or None,
                            fallback=fallback), name
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{name!r} is neither a registered model name, an 'hf-hub:org/name' id, nor an existing folder"
        )
    if not (folder / filename).is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} lacks {filename}; a segzoo model folder is written by segzoo.save_pretrained"
        )
    return str(folder / filename), str(folder)


def read_saved_config(name: str) -> tuple[dict[str, Any], str]:
    """The ``config.json`` of a saved model (folder or ``hf-hub:`` id), checked, and where it is."""
    config_file, where = resolve_saved_file(name, CONFIG_NAME)
    try:
        config = json.loads(Path(config_file).read_text())
        config["architecture"], config["model_kwargs"] = str(config["architecture"]), dict(config["model_kwargs"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{where}: {CONFIG_NAME} is not a segzoo model config ({err})") from err
    return config, where


def _model_config(model: nn.Module) -> dict[str, Any]:
    description = getattr(model, "description", None)
    if description is None:
        raise ValueError(
            "this model does not record how to rebuild it: create it with segzoo.create_model(name, ...) "
            "so save_pretrained can write its registered name and kwargs to config.json"
        )
    config = {
        **description.to_dict(),
        "num_classes": description.kwargs.get("num_classes", getattr(model, "num_classes", None)),
        "in_chans": description.kwargs.get("in_chans", getattr(model, "in_chans", 3)),
        "format_version": FORMAT_VERSION,
        "pretrained_cfg": dict(getattr(model, "pretrained_cfg", {})),
    }
    try:
        json.dumps(config)
    except TypeError as err:
        raise ValueError(
            f"cannot write config.json: a model kwarg is not JSON-serialisable ({err}); pass plain "
            "numbers, strings, lists and dicts to create_model"
        ) from err
    return config


def _model_card(config: dict[str, Any]) -> str:
    """The model card: Hub metadata from the registry entry and the weights' own record (licence id,
    name and link; base model; tags), then what the model is and how to load it."""
    cfg = config["pretrained_cfg"]
    entry = model_entry(config["architecture"]) if is_model(config["architecture"]) else None
    spec = entry.backbone if entry is not None else None
    head = entry.head if entry is not None else None
    licence = cfg.get("license") or "unknown"
    licence_meta = {"license": licence}
    if licence == "other" or licence == "unknown":  # the Hub wants a name and a link to the terms
        licence_meta = dict(license="other", license_name=cfg.get("license_name") or "unknown",
                            license_link=cfg.get("license_link") or None)
    tag = config["model_kwargs"].get("pretrained_tag")
    base_model = (config.get("weights") or {}).get("hf_hub_id")  # set when built on the published file
    tags = ["segzoo", "semantic-segmentation", *(t for t in (head and head.name, spec and spec.family) if t)]
    data = huggingface_hub.ModelCardData(library_name="segzoo", pipeline_tag="image-segmentation", tags=tags,
                                         base_model=base_model, **licence_meta)
    what = (f"the {head.title} over {spec.title} ({head.summary})" if head is not None and spec is not None
            else "a semantic-segmentation model")
    licence_line = _licence_line(cfg)
    encoder = f"timm `{cfg['timm_arch']}`" if cfg.get("timm_arch") else "transformers' encoder"
    body = [
        f"# {config['architecture']}",
        "",
        f"Saved by segzoo {config['segzoo_version']}: {what}, mapping (B, in_chans, H, W) images to "
        "(B, classes, H, W) logits.",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{config['architecture']}` |",
        f"| backbone | `{cfg.get('backbone', '?')}` ({encoder}{f', weights `{tag}`' if tag else ''}) |",
        f"| classes | {config['num_classes']} |",
        f"| input channels | {config['in_chans']} |",
        f"| input normalisation | mean {cfg.get('mean')}, std {cfg.get('std')} |",
        f"| base weights licence | {licence_line} |",
        f"| base weights source | {cfg.get('source', '')} |",
        *([f"| input advice | {cfg['input_advice']} |"] if cfg.get("input_advice") else []),
        "",
        "The fine-tuned weights inherit the terms of the base weights' licence.",
        "",
        "```python",
        "import segzoo",
        'model = segzoo.create_model("hf-hub:<this repo>")  # or the local folder',
        "```",
        "",
    ]
    return str(huggingface_hub.ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


def _licence_line(cfg: dict[str, Any]) -> str:
    licence = cfg.get("license") or "unknown"
    if licence != "other":
        return licence
    name, link = cfg.get("license_name") or "other", cfg.get("license_link")
    return f"[{name}]({link})" if link else name
