"""Shared test set-up: MindSpore on CPU, PyNative unless a test asks for graph mode."""
import mindspore as ms
import pytest

ms.set_device("CPU")


@pytest.fixture(autouse=True)
def pynative_by_default():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)
