"""Deprecated path of :mod:`nnunet_bridge.demo.synthetic_volumes` (same names)."""

import warnings

from .demo.synthetic_volumes import VOLUME_LABELS, VOLUME_SPACING, ct_case, write_ct_dataset

__all__ = ["VOLUME_LABELS", "VOLUME_SPACING", "ct_case", "write_ct_dataset"]

# at import, so once per process
warnings.warn("nnunet_bridge.synthetic_volumes moved to nnunet_bridge.demo.synthetic_volumes: import it from there",
              FutureWarning, stacklevel=2)
