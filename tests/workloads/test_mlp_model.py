import numpy as np
import pytest
import torch

from orchestrator.workloads.mlp.config import MLPDataConfig, MLPModelConfig
from orchestrator.workloads.mlp.data import DigitsDataset
from orchestrator.workloads.mlp.model import MLP
from orchestrator.workloads.mlp.predict import evaluate_accuracy, load_model, predict


def hand_made_model(**penalty) -> MLP:
    model = MLP(MLPModelConfig(hidden_sizes=[2]), in_features=3, n_classes=2, **penalty)
    first, second = model.net[0], model.net[-1]
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.0, 3.0]]))  # sum|w| 6.5, sum w^2 14.25
        second.weight.copy_(torch.tensor([[-1.0, 2.0], [0.0, -0.5]]))  # sum|w| 3.5, sum w^2 5.25
        first.bias.fill_(100.0)  # biases are not penalised
        second.bias.fill_(-100.0)
    return model


def test_penalty_math():
    model = hand_made_model()
    assert model.penalty(l1=1.0, l2=0.0).item() == pytest.approx(10.0)
    assert model.penalty(l1=0.0, l2=1.0).item() == pytest.approx(19.5)
    assert model.penalty(l1=0.1, l2=0.01).item() == pytest.approx(0.1 * 10.0 + 0.01 * 19.5)


def test_penalty_is_added_to_the_training_loss_only():
    x, y = torch.randn(5, 3), torch.randint(2, (5,))
    plain, penalised = hand_made_model(), hand_made_model(l1=0.1, l2=0.01)
    assert penalised(x, y)[1].item() == pytest.approx(plain(x, y)[1].item() + 1.195)
    penalised.eval()
    assert penalised(x, y)[1].item() == pytest.approx(plain(x, y)[1].item())


@pytest.fixture(scope="module")
def trained() -> tuple[MLP, MLPModelConfig, MLPDataConfig]:
    model_cfg, data_cfg = MLPModelConfig(), MLPDataConfig()
    dataset = DigitsDataset(data_cfg)
    torch.manual_seed(0)
    model = MLP(model_cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(300):
        _, loss = model(*dataset.batch(torch.Generator().manual_seed(step), 64))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), model_cfg, data_cfg


def test_short_training_classifies_digits(trained):
    model, _, data_cfg = trained
    assert evaluate_accuracy(model, data_cfg) > 0.9


def test_predictions_survive_save_and_reload(trained, tmp_path):
    model, model_cfg, data_cfg = trained
    torch.save(model.state_dict(), tmp_path / "model.pt")
    dataset = DigitsDataset(data_cfg)  # rebuilt from the config: the same split and train mean/std
    features = dataset.raw_features["val"]
    expected = predict(model, features, dataset.mean, dataset.std)
    assert expected.shape == (len(features),) and set(np.unique(expected)) <= set(range(10))
    for source in (tmp_path / "model.pt", str(tmp_path / "model.pt"), model.state_dict()):
        reloaded = load_model(source, model_cfg)
        np.testing.assert_array_equal(predict(reloaded, features, dataset.mean, dataset.std), expected)
