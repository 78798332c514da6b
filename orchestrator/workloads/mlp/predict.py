"""Inference with a trained MLP: load weights, classify raw digit features, measure val accuracy."""

from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator.workloads.mlp.config import MLPDataConfig, MLPModelConfig
from orchestrator.workloads.mlp.data import DigitsDataset, standardize
from orchestrator.workloads.mlp.model import MLP


def load_model(
    state_dict_path_or_dict: str | Path | dict[str, torch.Tensor], model_cfg: MLPModelConfig
) -> MLP:
    """An MLP in eval mode from a state_dict or a file saved with torch.save(model.state_dict(), path)."""
    state_dict = state_dict_path_or_dict
    if not isinstance(state_dict, dict):
        state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
    model = MLP(model_cfg)
    model.load_state_dict(state_dict)
    return model.eval()


@torch.no_grad()
def predict(model: MLP, features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Class ids for raw (N, 64) pixel features, standardised with the training run's mean/std."""
    x = torch.from_numpy(standardize(features, mean, std))
    logits, _ = model.eval()(x)
    return logits.argmax(dim=-1).numpy()


def evaluate_accuracy(model: MLP, cfg_data: MLPDataConfig) -> float:
    """Accuracy on the val split of `cfg_data`, which must be the config the model was trained with: the
    split and its train mean/std are rebuilt from it deterministically."""
    data = DigitsDataset(cfg_data)
    predictions = predict(model, data.raw_features["val"], data.mean, data.std)
    return float((predictions == data.labels["val"].numpy()).mean())


def predict_for_job(spec: dict[str, Any], state_dict: dict[str, torch.Tensor],
                    features: np.ndarray | None) -> dict[str, Any]:
    """`orch predict`: class ids for `features`, or for the job's own validation split with its accuracy."""
    model = load_model(state_dict, MLPModelConfig(**spec["model"]))
    data = DigitsDataset(MLPDataConfig(**spec["data"]))  # the job's split: its train mean/std standardise inputs
    predictions = predict(model, data.raw_features["val"] if features is None else features, data.mean, data.std)
    result: dict[str, Any] = {"n": int(len(predictions)), "predictions": predictions.tolist()}
    if features is None:
        result["accuracy"] = float((predictions == data.labels["val"].numpy()).mean())
    return result
