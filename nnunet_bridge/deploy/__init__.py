"""Prediction without torch or nnU-Net: :mod:`~nnunet_bridge.deploy.onnx_predict` is one file
(numpy, scipy, onnxruntime) to copy next to an exported fold. Nothing is imported here, so
``python -m nnunet_bridge.deploy.onnx_predict`` loads no more than that file."""
