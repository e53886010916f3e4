import pytest

from tests.dashboard import dashboard_store


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    """The dashboard tests' store (dashboard_store.build), built once per test module."""
    return dashboard_store.build(tmp_path_factory.mktemp("dash") / "store")
