#!/usr/bin/env python
"""A compatibility name (docs/compatibility.md), kept working: ``python nnUNetv2_train_segformer.py 996 2d 0 --segformer_config my.yaml``.

It trains the zoo configuration derived from the YAML's model section (planned if it is
missing), so it and ``segzoo-nnunet train 996 2d_<model> 0 --config my.yaml`` are the same run.
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

    from nnunet_bridge.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
