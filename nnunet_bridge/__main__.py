"""``python -m nnunet_bridge`` (as torchrun's ``-m nnunet_bridge``): the ``segzoo-nnunet`` command."""

import sys

from .cli import main

sys.exit(main())
