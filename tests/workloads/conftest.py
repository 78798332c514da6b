import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These models are tiny: a second intra-op thread costs more in synchronisation than it saves, and on a
    busy CI machine spinning OpenMP threads slow the trainings here several-fold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
