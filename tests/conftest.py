import os
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def cifar_train():
    return str(DATA / "cifar10" / "train")


@pytest.fixture
def cifar_test():
    return str(DATA / "cifar10" / "test")


@pytest.fixture
def fmnist():
    return str(DATA / "fashion-mnist")
