"""reproduce.device: the checked device, and IEEE float32 (no TF32) on CUDA unless asked for."""
from __future__ import annotations

import pytest
import torch

from reproduce.runtime import device as dv


@pytest.fixture
def restore_tf32():
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, dv.tf32_allowed())
    yield
    dv.set_tf32(saved[2])
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[:2]


def test_set_tf32_sets_both_torch_flags(restore_tf32):
    dv.set_tf32(True)
    assert dv.tf32_allowed() and torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    dv.set_tf32(False)
    assert not dv.tf32_allowed()
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def test_a_cuda_device_gets_ieee_float32_by_default(restore_tf32, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    dv.set_tf32(False)
    torch.backends.cudnn.allow_tf32 = True            # PyTorch's own default for cuDNN convolutions
    assert dv.resolve_device("cuda") == torch.device("cuda")
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    with pytest.raises(RuntimeError, match="only 1 CUDA GPU"):
        dv.resolve_device("cuda:1")


def test_a_cpu_device_leaves_the_flags_alone(restore_tf32):
    torch.backends.cudnn.allow_tf32 = True
    assert dv.resolve_device("cpu") == torch.device("cpu")
    assert torch.backends.cudnn.allow_tf32


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="PyTorch sees no CUDA GPU"):
        dv.resolve_device("cuda")


def test_module_device_is_where_the_first_tensor_lives():
    assert dv.module_device(torch.nn.ReLU()) == torch.device("cpu")
    assert dv.module_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    net = torch.nn.BatchNorm1d(3, affine=False)                  # buffers only
    assert dv.module_device(net) == torch.device("cpu")


def test_choose_device_defaults_to_the_gpu_when_there_and_checks_names(monkeypatch):
    assert dv.choose_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="use cpu, cuda or cuda:N"):
        dv.choose_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dv.choose_device(None) == "cpu"
    with pytest.raises(RuntimeError, match="--device cuda:0 asked for, but PyTorch sees no CUDA GPU"):
        dv.choose_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dv.choose_device(None) == "cuda"
