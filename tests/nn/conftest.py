import pytest

from numpymnv2.backend import use_backend


@pytest.fixture(autouse=True)
def reference_backend():
    """The layers under test run the readable reference ops; tests/kernels compares the fast backend to them."""
    with use_backend("reference"):
        yield
