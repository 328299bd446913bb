"""EoMT's masked-attention annealing, driven by nnU-Net's epoch count."""

from __future__ import annotations

from .base import ZooTrainerBase

__all__ = ["AnnealsMaskedAttention"]


class AnnealsMaskedAttention(ZooTrainerBase):
    """Before each epoch, ``model.set_mask_annealing(epoch / num_epochs)`` for a model that
    has it (EoMT): the paper's schedule spread over the planned epochs, so the last epochs
    train, and the final checkpoint predicts, without masks. A continued run (``--c``)
    resumes at its epoch."""

    def on_train_epoch_start(self):
        model = self.bare_network().model
        if hasattr(model, "set_mask_annealing"):
            model.set_mask_annealing(min(self.current_epoch / self.num_epochs, 1.0))
        super().on_train_epoch_start()
