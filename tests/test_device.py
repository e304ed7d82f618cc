"""localfm.device: device names, availability checks and the float32 matmul guard."""
from __future__ import annotations

import pytest
import torch

from localfm.device import check_device_name, float32_matmul, resolve_device
from localfm.errors import LocalFMError


@pytest.mark.parametrize("given, name", [("cpu", "cpu"), (" CUDA ", "cuda"), ("cuda:3", "cuda:3"), ("mps", "mps")])
def test_names_are_normalised(given, name):
    assert check_device_name(given) == name


@pytest.mark.parametrize("given", ["gpu", "cuda:", "cuda:x", "", None, 0, "tpu"])
def test_bad_names_name_the_parameter(given):
    with pytest.raises(LocalFMError, match=r"^device: expected cpu, cuda, cuda:N or mps") as info:
        check_device_name(given)
    assert info.value.param == "device"


def test_a_phrase_subject_is_not_a_flag():
    with pytest.raises(LocalFMError, match=r"^hyperparameter '_local_device': expected") as info:
        check_device_name("gpu", param="hyperparameter '_local_device'")
    assert info.value.param is None  # the CLI must not rewrite a hyperparameter into a flag


def test_missing_devices_fail_in_one_line(monkeypatch):
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LocalFMError, match=r"^device: 'cuda:1' asked for, but torch sees no CUDA device here"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(LocalFMError, match=r"'cuda:2' asked for, but torch sees 2 CUDA device"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(LocalFMError, match=r"^device: 'mps' asked for, but torch has no MPS device"):
        resolve_device("mps")


def test_float32_matmul_holds_highest_and_restores_the_callers_setting():
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        with float32_matmul():
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "medium"
        with pytest.raises(RuntimeError), float32_matmul():
            raise RuntimeError("boom")
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
