"""Export a trained nnU-Net fold of a zoo model to ONNX, with what a deployer needs beside it.

:mod:`nnunet_bridge.deploy.onnx_predict` runs the file as ``nnUNetv2_predict`` runs the fold.

The graph is the network nnU-Net runs (:class:`~nnunet_bridge.network.ZooNetwork`): the
backbone's mean/std applied to ``rgb_to_0_1`` / ``rescale_to_0_1`` channels, then the zoo
model; input a preprocessed patch ``(B, C, H, W)``, output ``logits`` ``(B, K, H, W)``. The
JSON beside it holds what nnU-Net does around the network: patch size, channel names,
the intensity normalisation per channel (with the dataset's intensity statistics), labels,
spacing and axis order, and the file ending of the dataset's images. The file is checked
against the PyTorch network with ONNX Runtime; its weights are inside it unless they exceed
ONNX's 2 GB limit (then a sidecar ``<output>.data`` is written beside it and printed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.file_path_utilities import get_output_folder
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from segzoo.export import describe_onnx, export_module_onnx

from .checkpoint_files import load_checkpoint_file
from .training.checkpoints import strip_module_prefix

__all__ = ["export_fold"]


def export_fold(dataset: str | int, configuration: str, fold: int | str, output: str | Path,
                trainer: str = "nnUNetTrainerSegZoo", plans_identifier: str = "nnUNetPlans",
                checkpoint: str = "checkpoint_final.pth", trust_checkpoint: bool = False,
                verbose: bool = False) -> tuple[Path, Path]:
    """Write ``output`` (ONNX) and ``output`` with ``.json`` (deployment facts); return both paths.

    A model over ONNX's 2 GB limit also gets ``output`` + ``.data`` (its weights), printed here
    since it must be copied with the file. A checkpoint that would run code when loaded is
    refused unless ``trust_checkpoint``. ``verbose`` shows the exporter's own notes and warnings.
    """
    try:
        dataset = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as err:  # nnU-Net's "could not find a dataset", said without its traceback
        raise FileNotFoundError(f"no dataset {dataset!r} in nnUNet_raw, nnUNet_preprocessed or nnUNet_results; "
                                "check the id and those environment variables") from err
    folder = Path(get_output_folder(dataset, trainer, plans_identifier, configuration, fold))
    checkpoint_file = folder / checkpoint
    if not checkpoint_file.is_file():
        raise FileNotFoundError(f"no {checkpoint} in {folder}: train the fold first "
                                f"(segzoo-nnunet train {dataset} {configuration} {fold})")
    # read first, so a file that would run code is refused before any work; runs no code unless trusted
    saved = load_checkpoint_file(checkpoint_file, trusted=trust_checkpoint)
    dataset_json = json.loads((folder.parent / "dataset.json").read_text())
    plans_manager = PlansManager(json.loads((folder.parent / "plans.json").read_text()))
    config = plans_manager.get_configuration(configuration)
    labels = plans_manager.get_label_manager(dataset_json)
    channels = determine_num_input_channels(plans_manager, config, dataset_json)
    network = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                     config.network_arch_init_kwargs_req_import, channels,
                                     labels.num_segmentation_heads, allow_init=True, deep_supervision=False)
    network.load_state_dict(strip_module_prefix(saved["network_weights"]))
    output = Path(output)
    export_module_onnx(network, output, (channels, *config.patch_size), verbose=verbose)
    for sidecar in describe_onnx(output).files[1:]:  # the caller prints the .onnx and .json
        print(f"wrote {sidecar} (the weights, over ONNX's 2 GB limit: {output.name} reads them from beside it, "
              "so copy both)")
    facts = _deployment_facts(plans_manager, config, dataset_json, configuration, fold, checkpoint)
    facts["inference"] = {  # what nnUNetv2_predict does around the network by default
        "tile_step_size": 0.5, "gaussian_sigma_scale": 1 / 8,
        "mirror_axes": list(saved.get("inference_allowed_mirroring_axes") or []),
    }
    facts_file = output.with_suffix(".json")
    facts_file.write_text(json.dumps(facts, indent=2) + "\n")
    return output, facts_file


def _deployment_facts(plans_manager: Any, config: Any, dataset_json: dict, configuration: str, fold: Any,
                      checkpoint: str) -> dict[str, Any]:
    properties = plans_manager.plans.get("foreground_intensity_properties_per_channel", {})
    channel_names = dataset_json.get("channel_names", dataset_json.get("modality", {}))
    return {
        "dataset": plans_manager.dataset_name, "configuration": configuration, "fold": fold, "checkpoint": checkpoint,
        "input": "image (B, C, H, W): the case preprocessed as nnU-Net does (resampled to the spacing, normalised "
                 "per channel as below), cut into patches of patch_size (sliding window)",
        "output": "logits (B, K, H, W): argmax over K gives the label values below",
        "patch_size": list(config.patch_size),
        # how nnU-Net reads the cases (the predictor's command reads the same files the same way)
        "file_ending": dataset_json.get("file_ending", ".png"),
        "image_reader": dataset_json.get("overwrite_image_reader_writer") or "by file ending",
        "spacing": list(config.spacing),
        "spacing_axes": "after transpose_forward; a 2d configuration's: the in-plane axes (slices keep theirs)",
        "transpose_forward": list(plans_manager.transpose_forward),
        "transpose_backward": list(plans_manager.transpose_backward),
        "crop_to_nonzero": True,  # nnU-Net's preprocessing always crops to the nonzero bounding box
        "channels": [
            {"index": int(index), "name": name, "normalization": scheme, "use_mask_for_norm": bool(masked),
             "intensity_properties": properties.get(str(index), {})}
            for (index, name), scheme, masked in zip(sorted(channel_names.items(), key=lambda kv: int(kv[0])),
                                                     config.normalization_schemes, config.use_mask_for_norm)
        ],
        "labels": dataset_json["labels"],
        "network_normalization": "the graph applies the backbone's mean/std itself to channels nnU-Net scales to "
                                 "[0, 1] (RGBTo01Normalization / RescaleTo01Normalization)",
    }
