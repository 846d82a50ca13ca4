"""Devices are checked where the user names them."""

from __future__ import annotations

import pytest
import torch

import rwkvkit
from rwkvkit.defaults import DEFAULT_MODEL
from rwkvkit.device import resolve_device
from rwkvkit.errors import ConfigError


def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown --device 'bogus'"):
        resolve_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(ConfigError, match="there is no GPU 99"):
            resolve_device("cuda:99")


def test_load_model_checks_the_device_first() -> None:
    with pytest.raises(ConfigError, match="--device"):
        rwkvkit.load_model(DEFAULT_MODEL, device="tpu9")
