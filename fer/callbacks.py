"""Lightning callbacks of the project."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import lightning as L

from fer.viz import curves_figure, save


class TrainingCurves(L.Callback):
    """Writes the per-epoch loss/accuracy/F1 curves to a PNG after every epoch (TensorBoard has
    the same scalars; the PNG is for reading a run without it)."""

    def __init__(self, path: str, keys: tuple[str, ...] = ("train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/f1_macro")):
        self.path = Path(path)
        self.keys = keys
        self.history: dict[str, list[float]] = defaultdict(list)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        for key in self.keys:
            if key in trainer.callback_metrics:
                self.history[key].append(float(trainer.callback_metrics[key]))
        save(curves_figure(self.history), self.path)

    def state_dict(self) -> dict:
        return {"history": dict(self.history)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = defaultdict(list, state_dict["history"])
