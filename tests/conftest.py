import pytest
import torch


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
