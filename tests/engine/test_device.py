import pytest
import torch

from apis.utils.device import resolve_device

HAS_CUDA = torch.cuda.is_available()


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="'gpu' is not one of: auto, cpu, cuda, cuda:N"):
        resolve_device("gpu")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0")


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_gpu_indices_are_checked():
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="non-negative integer"):
        resolve_device("cuda:x")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
