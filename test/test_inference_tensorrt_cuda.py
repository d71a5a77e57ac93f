"""CUDA memory for the TensorRT backend: the cuda-python provider run against a fake runtime module
whose "device" memory is host memory at real addresses (``ctypes``), so pinned-buffer views,
pointer copies, tuple-returning calls, errors and freeing are all exercised; and the order in
which providers are tried, with the reason for each that does not start.
"""

import ctypes
import enum
import sys
import types

import numpy as np
import pytest

from dualdepth_ros.inference import BackendUnavailableError, ModelError, tensorrt_cuda
from dualdepth_ros.inference.tensorrt_cuda import open_cuda

# The binding's enums, under the binding's names.
CudaError = enum.Enum("cudaError_t", {"cudaSuccess": 0, "cudaErrorMemoryAllocation": 2, "cudaErrorNoDevice": 100})
MemcpyKind = enum.Enum("cudaMemcpyKind", {"cudaMemcpyHostToDevice": 1, "cudaMemcpyDeviceToHost": 2})


class FakeCudart:
    """``cuda.bindings.runtime`` as far as :class:`~tensorrt_cuda.CudaPython` uses it."""

    def __init__(self, devices: int = 1) -> None:
        self.devices = devices
        self.allocations: dict[int, ctypes.Array] = {}
        self.pinned: dict[int, ctypes.Array] = {}
        self.copies: list[tuple[str, int]] = []
        self.fail_malloc = False
        self.streams = 0

    def module(self) -> types.ModuleType:
        mod = types.ModuleType("cuda.bindings.runtime")
        ok = CudaError.cudaSuccess
        mod.cudaError_t, mod.cudaMemcpyKind = CudaError, MemcpyKind

        class Stream:
            def getPtr(self) -> int:  # noqa: N802
                return 0xBEEF

        def alloc(table, n):
            buf = ctypes.create_string_buffer(n)
            table[ctypes.addressof(buf)] = buf
            return ctypes.addressof(buf)

        def malloc(n):
            if self.fail_malloc:
                return (CudaError.cudaErrorMemoryAllocation, 0)
            return (ok, alloc(self.allocations, n))

        def stream_create():
            self.streams += 1
            return (ok, Stream())

        def stream_destroy(s):
            self.streams -= 1
            return (ok,)

        def memcpy(dst, src, n, kind, stream):
            assert isinstance(stream, Stream)
            ctypes.memmove(dst, src, n)
            self.copies.append((kind.name, n))
            return (ok,)

        mod.cudaGetDeviceCount = lambda: (ok, self.devices)
        mod.cudaSetDevice = lambda i: (ok,)
        mod.cudaGetDeviceProperties = lambda i: (ok, types.SimpleNamespace(name=b"Fake Orin\0\0\0", major=8, minor=7))
        mod.cudaStreamCreate = stream_create
        mod.cudaStreamDestroy = stream_destroy
        mod.cudaStreamSynchronize = lambda s: (ok,)
        mod.cudaMalloc = malloc
        mod.cudaFree = lambda p: (ok,) if self.allocations.pop(p, None) is not None else (ok,)
        mod.cudaMallocHost = lambda n: (ok, alloc(self.pinned, n))
        mod.cudaFreeHost = lambda p: (ok,) if self.pinned.pop(p, None) is not None else (ok,)
        mod.cudaMemcpyAsync = memcpy
        mod.cudaGetErrorName = lambda err: (ok, err.name.encode())
        return mod


@pytest.fixture()
def cudart(monkeypatch) -> FakeCudart:
    fake = FakeCudart()
    cuda_pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    monkeypatch.setitem(sys.modules, "cuda", cuda_pkg)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake.module())
    return fake


def test_cuda_python_buffers_round_trip_and_are_freed(cudart) -> None:
    mem = open_cuda(prefer="cuda-python")
    assert mem.name == "cuda-python" and mem.device_name == "Fake Orin" and mem.compute_capability == "8.7"
    assert mem.stream_handle() == 0xBEEF
    host_in = mem.host_buffer((1, 3, 4, 5), np.float32)
    host_out = mem.host_buffer((1, 3, 4, 5), np.float32)
    assert host_in.array.shape == (1, 3, 4, 5) and host_in.array.dtype == np.float32
    assert host_in.ptr in cudart.pinned  # the numpy array is a view of the page-locked allocation
    dev = mem.device_buffer(host_in.array.nbytes)
    assert dev.ptr in cudart.allocations and dev.nbytes == 240
    x = np.arange(60, dtype=np.float32).reshape(1, 3, 4, 5)
    host_in.array[:] = x
    mem.copy_to_device(dev, host_in)
    mem.copy_to_host(host_out, dev)
    mem.synchronize()
    np.testing.assert_array_equal(host_out.array, x)
    assert cudart.copies == [("cudaMemcpyHostToDevice", 240), ("cudaMemcpyDeviceToHost", 240)]
    mem.close()
    assert cudart.allocations == {} and cudart.pinned == {} and cudart.streams == 0


def test_cuda_python_errors(cudart) -> None:
    mem = open_cuda(prefer="cuda-python")
    cudart.fail_malloc = True
    with pytest.raises(ModelError, match="CUDA cudaMalloc failed: cudaErrorMemoryAllocation"):
        mem.device_buffer(16)
    mem.close()
    cudart.devices = 0
    with pytest.raises(BackendUnavailableError, match="cuda-python: cuda-python sees no CUDA device"):
        open_cuda(prefer="cuda-python")
    with pytest.raises(BackendUnavailableError, match="unknown CUDA memory provider 'cupy'"):
        open_cuda(prefer="cupy")


def test_providers_are_tried_in_order(cudart, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    mem = open_cuda()  # the torch-free cuda-python comes first
    assert mem.name == "cuda-python"
    mem.close()
    assert [name for name, _, _ in tensorrt_cuda.PROVIDERS] == ["cuda-python", "pycuda", "torch"]
