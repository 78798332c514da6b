import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from orchestrator.workloads.mlp.config import MLPDataConfig
from orchestrator.workloads.mlp.data import DigitsDataset


@pytest.fixture(scope="module")
def dataset() -> DigitsDataset:
    return DigitsDataset(MLPDataConfig())


def test_split_sizes_and_stratification(dataset):
    labels = {split: dataset.labels[split].numpy() for split in ("train", "val")}
    assert len(labels["train"]) + len(labels["val"]) == 1797
    assert len(labels["val"]) == pytest.approx(0.2 * 1797, abs=1)
    # Stratified: every class holds its overall share of the val split, to within one sample.
    overall = np.bincount(np.concatenate(list(labels.values())), minlength=10) / 1797
    np.testing.assert_allclose(np.bincount(labels["val"], minlength=10), overall * len(labels["val"]), atol=1)


def test_split_is_deterministic_per_seed(dataset):
    again = DigitsDataset(MLPDataConfig())
    np.testing.assert_array_equal(again.raw_features["val"], dataset.raw_features["val"])
    other = DigitsDataset(MLPDataConfig(split_seed=1))
    assert not np.array_equal(other.raw_features["val"], dataset.raw_features["val"])


def test_standardisation_uses_train_statistics_only(dataset):
    train = dataset.raw_features["train"]
    np.testing.assert_array_equal(dataset.mean, train.mean(axis=0))
    assert not np.allclose(dataset.mean, load_digits().data.mean(axis=0))  # val statistics are not mixed in
    standardized = dataset.features["train"].numpy()
    varying = train.std(axis=0) > 0
    np.testing.assert_allclose(standardized.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(standardized[:, varying].std(axis=0), 1, atol=1e-4)
    assert np.all(standardized[:, ~varying] == 0)  # constant border pixels: centred, not divided by 0
    std = np.where(varying, train.std(axis=0), 1)
    expected_val = (dataset.raw_features["val"] - train.mean(axis=0)) / std
    np.testing.assert_allclose(dataset.features["val"].numpy(), expected_val, rtol=1e-5, atol=1e-5)


def test_standardisation_can_be_disabled():
    dataset = DigitsDataset(MLPDataConfig(standardize=False))
    np.testing.assert_array_equal(dataset.features["train"].numpy(), dataset.raw_features["train"])


def test_batches_are_a_pure_function_of_the_generator_seed(dataset):
    def batch(seed, split="train"):
        torch.manual_seed(seed + 1000)  # the global RNG must not matter
        return dataset.batch(torch.Generator().manual_seed(seed), 32, split)

    x, y = batch(5)
    assert x.shape == (32, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert all(torch.equal(a, b) for a, b in zip(batch(5), batch(5), strict=True))
    assert not torch.equal(batch(5)[0], batch(6)[0])
    assert not torch.equal(batch(5)[0], batch(5, "val")[0])
