"""``segzoo-nnunet demo`` and the synthetic datasets it and the tests train on.

:mod:`~nnunet_bridge.demo.pipeline` runs the demo, :mod:`~nnunet_bridge.demo.baseline` trains
nnU-Net's own U-Net on the same short budget, :mod:`~nnunet_bridge.demo.synthetic` writes fundus-like
photographs and :mod:`~nnunet_bridge.demo.synthetic_volumes` CT-like volumes.
"""
