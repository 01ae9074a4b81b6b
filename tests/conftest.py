import os

# Two test workers share two cores: one thread each, in the workers and in every study, replay
# or reconstruct subprocess they start (which inherit the environment). Measured on a study
# trial alone: 20.8 s with one thread, 26.8 s with two (small problems spin, not compute).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# a user's team storage is not the tests' (each test names its own store and storage)
os.environ.pop("CPIKAN_STORAGE", None)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(1)
    yield


@pytest.fixture
def mlruns(tmp_path, monkeypatch):
    """An empty embedded store of this test's own (``CPIKAN_MLRUNS``)."""
    from tracking import store

    monkeypatch.setenv(store.ENV_ROOT, str(tmp_path / "mlruns"))
    monkeypatch.delenv(store.ENV_URI, raising=False)
    return tmp_path / "mlruns"
