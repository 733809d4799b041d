import os
from pathlib import Path

# pytest-xdist runs one worker per core (-n auto): each worker and the processes its tests start get their share of
# the cores, not all of them each (set before torch is imported, so the subprocesses inherit it)
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_threads = max(1, min(2, (os.cpu_count() or 1) // _workers))
if _workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))

import pytest  # noqa: E402
import torch  # noqa: E402

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent

torch.set_num_threads(_threads)


@pytest.fixture
def cifar_train():
    return str(DATA / "cifar10" / "train")


@pytest.fixture
def cifar_test():
    return str(DATA / "cifar10" / "test")


@pytest.fixture
def fmnist():
    return str(DATA / "fashion-mnist")
