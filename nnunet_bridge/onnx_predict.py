"""Deprecated path of :mod:`nnunet_bridge.deploy.onnx_predict` (same names; ``python -m`` still runs)."""

import warnings

from .deploy.onnx_predict import OnnxFoldPredictor, gaussian_weights, main, normalize_channel, sliding_window_steps

__all__ = ["OnnxFoldPredictor", "normalize_channel", "sliding_window_steps", "gaussian_weights"]

# at import, so once per process
warnings.warn("nnunet_bridge.onnx_predict moved to nnunet_bridge.deploy.onnx_predict: import it from there, "
              "or run `python -m nnunet_bridge.deploy.onnx_predict`", FutureWarning, stacklevel=2)

if __name__ == "__main__":
    raise SystemExit(main())
