"""scikit-learn's bundled digits (1797 8x8 images, 10 classes): split, standardisation, batches.

Inference recovers the standardisation by rebuilding DigitsDataset from the same MLPDataConfig: the data
ship with scikit-learn and the split is seeded, so mean/std come out identical without being stored.
"""

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from orchestrator.workloads.mlp.config import MLPDataConfig


def standardize(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((features - mean) / std).astype(np.float32)


class DigitsDataset:
    def __init__(self, cfg: MLPDataConfig):
        features, labels = load_digits(return_X_y=True)
        # Stratified so that a small val split still holds every class in its overall proportion.
        x_train, x_val, y_train, y_val = train_test_split(
            features, labels, test_size=cfg.val_fraction, stratify=labels, random_state=cfg.split_seed
        )
        self.raw_features = {"train": x_train, "val": x_val}
        if cfg.standardize:
            # Train statistics only: val must look like unseen data. Border pixels are constant (std 0),
            # and dividing by 1 there leaves them at 0 after centring.
            self.mean, std = x_train.mean(axis=0), x_train.std(axis=0)
            self.std = np.where(std > 0, std, 1.0)
        else:
            self.mean, self.std = np.zeros(x_train.shape[1]), np.ones(x_train.shape[1])
        self.features = {
            split: torch.from_numpy(standardize(x, self.mean, self.std))
            for split, x in self.raw_features.items()
        }
        self.labels = {"train": torch.from_numpy(y_train), "val": torch.from_numpy(y_val)}

    def batch(
        self, generator: torch.Generator, batch_size: int, split: str = "train"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised features (batch_size, 64) float32 and labels (batch_size,) int64, drawn with
        replacement using only `generator`: the batch is a pure function of its state."""
        idx = torch.randint(len(self.labels[split]), (batch_size,), generator=generator)
        return self.features[split][idx], self.labels[split][idx]
