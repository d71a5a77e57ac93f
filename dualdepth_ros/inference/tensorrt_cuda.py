"""The TensorRT module and the CUDA memory the TensorRT backend runs with, from whatever is installed.

TensorRT's Python API runs an engine on device addresses and a CUDA stream but allocates
neither. This module finds a library that does, without adding a dependency:

1. **cuda-python** (``cuda.bindings.runtime`` or the older ``cuda.cudart``), NVIDIA's own
   bindings, ``pip install cuda-python``;
2. **pycuda** (``pycuda.driver``), ``pip install pycuda``;
3. **torch**, when it is importable and sees a CUDA device (device buffers are CUDA tensors,
   host buffers pinned tensors, copies on a ``torch.cuda.Stream``) — last, so that the TensorRT
   path stays torch-free wherever one of the others is installed.

:func:`open_cuda` returns the first that starts as a :class:`CudaMemory`; when none does it
raises :class:`BackendUnavailableError` saying what to install. Importing this module imports
none of them (nor TensorRT): :func:`import_tensorrt` and :func:`open_cuda` import on call.

Every :class:`CudaMemory` offers the same few calls (device 0, one stream)::

    name, device_name, compute_capability ("8.7")
    stream_handle() -> int                     what execute_async_v3 takes
    device_buffer(nbytes) -> DeviceBuffer      .ptr: the device address (int)
    host_buffer(shape, dtype) -> HostBuffer    .array: a numpy view of page-locked memory
    copy_to_device(dst, src) / copy_to_host(dst, src)    asynchronous, on the stream
    synchronize(), activate() (a context manager), close()
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .backend import BackendUnavailableError, ModelError

__all__ = [
    "TENSORRT_INSTALL_HINT",
    "CUDA_INSTALL_HINT",
    "import_tensorrt",
    "CudaMemory",
    "DeviceBuffer",
    "HostBuffer",
    "open_cuda",
]

TENSORRT_INSTALL_HINT = (
    "JetPack ships TensorRT (python3-libnvinfer); on x86 install it from NVIDIA "
    "(pip install tensorrt from pypi.nvidia.com, or the tarball's python wheel)"
)
CUDA_INSTALL_HINT = "pip install cuda-python (or pycuda), or a CUDA build of torch"


def import_tensorrt() -> Any:
    """The ``tensorrt`` module; :class:`BackendUnavailableError` (with install notes) when it is absent."""
    try:
        import tensorrt
    except ImportError as err:
        raise BackendUnavailableError(
            f"the tensorrt Python module is not importable ({err}); {TENSORRT_INSTALL_HINT}"
        ) from None
    except Exception as err:  # noqa: BLE001 - a broken install (missing libnvinfer) raises OSError and others
        raise BackendUnavailableError(
            f"the tensorrt Python module fails to import ({type(err).__name__}: {err})"
        ) from None
    return tensorrt


class DeviceBuffer:
    """``nbytes`` of device memory at address ``ptr``; ``handle`` keeps the owning object alive."""

    def __init__(self, ptr: int, nbytes: int, handle: Any = None, free: Callable[[], None] | None = None) -> None:
        self.ptr = int(ptr)
        self.nbytes = int(nbytes)
        self.handle = handle
        self._free = free

    def free(self) -> None:
        if self._free is not None:
            self._free()
            self._free = None
        self.handle = None


class HostBuffer:
    """Page-locked host memory seen as ``array`` (numpy, the tensor's shape and dtype)."""

    def __init__(self, array: np.ndarray, handle: Any = None, free: Callable[[], None] | None = None) -> None:
        self.array = array
        self.handle = handle
        self._free = free

    @property
    def ptr(self) -> int:
        return int(self.array.ctypes.data)

    def free(self) -> None:
        self.array = None  # type: ignore[assignment]
        if self._free is not None:
            self._free()
            self._free = None
        self.handle = None


class CudaMemory:
    """Device 0, one stream, buffers and asynchronous copies (module docstring); base of the three providers."""

    name = ""

    def __init__(self) -> None:
        self.device_name = ""
        self.compute_capability = ""
        self._buffers: list[DeviceBuffer | HostBuffer] = []

    def stream_handle(self) -> int:
        raise NotImplementedError

    def device_buffer(self, nbytes: int) -> DeviceBuffer:
        raise NotImplementedError

    def host_buffer(self, shape: tuple[int, ...], dtype: Any) -> HostBuffer:
        raise NotImplementedError

    def copy_to_device(self, dst: DeviceBuffer, src: HostBuffer) -> None:
        raise NotImplementedError

    def copy_to_host(self, dst: HostBuffer, src: DeviceBuffer) -> None:
        raise NotImplementedError

    def synchronize(self) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Make this provider's CUDA context current on the calling thread (a no-op for the runtime-API ones)."""
        yield

    def close(self) -> None:
        for buf in reversed(self._buffers):
            buf.free()
        self._buffers.clear()

    def _keep(self, buf: Any) -> Any:
        self._buffers.append(buf)
        return buf


# ---------------------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------------------
class TorchCuda(CudaMemory):
    """CUDA memory from torch (CUDA tensors, pinned tensors, a ``torch.cuda.Stream``)."""

    name = "torch"

    def __init__(self) -> None:
        super().__init__()
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError("torch sees no CUDA device")
        self._torch = torch
        self._device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.init()
        major, minor = torch.cuda.get_device_capability(self._device)
        self.device_name = torch.cuda.get_device_name(self._device)
        self.compute_capability = f"{major}.{minor}"
        self._stream = torch.cuda.Stream(self._device)

    def stream_handle(self) -> int:
        return int(self._stream.cuda_stream)

    def device_buffer(self, nbytes: int) -> DeviceBuffer:
        t = self._torch.empty(max(1, int(nbytes)), dtype=self._torch.uint8, device=self._device)
        return self._keep(DeviceBuffer(t.data_ptr(), nbytes, handle=t))

    def host_buffer(self, shape: tuple[int, ...], dtype: Any) -> HostBuffer:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        t = self._torch.empty(max(1, nbytes), dtype=self._torch.uint8, pin_memory=True)
        array = t.numpy()[:nbytes].view(dtype).reshape(shape)
        return self._keep(HostBuffer(array, handle=t))

    def copy_to_device(self, dst: DeviceBuffer, src: HostBuffer) -> None:
        with self._torch.cuda.stream(self._stream):
            dst.handle[: src.array.nbytes].copy_(src.handle[: src.array.nbytes], non_blocking=True)

    def copy_to_host(self, dst: HostBuffer, src: DeviceBuffer) -> None:
        with self._torch.cuda.stream(self._stream):
            dst.handle[: dst.array.nbytes].copy_(src.handle[: dst.array.nbytes], non_blocking=True)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        super().close()
        self._stream = None


# ---------------------------------------------------------------------------------------
# cuda-python
# ---------------------------------------------------------------------------------------
def _import_cudart() -> Any:
    for name in ("cuda.bindings.runtime", "cuda.cudart"):  # cuda-python ≥ 12.6, then the older layout
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("neither cuda.bindings.runtime nor cuda.cudart")


class CudaPython(CudaMemory):
    """CUDA memory from NVIDIA's cuda-python runtime bindings (``cudaMalloc``, ``cudaMallocHost``, …)."""

    name = "cuda-python"

    def __init__(self) -> None:
        super().__init__()
        self._rt = _import_cudart()
        (count,) = self._call("cudaGetDeviceCount", unavailable=True)
        if count < 1:
            raise BackendUnavailableError("cuda-python sees no CUDA device")
        self._call("cudaSetDevice", 0)
        (prop,) = self._call("cudaGetDeviceProperties", 0)
        name = prop.name
        self.device_name = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).split("\x00")[0]
        self.compute_capability = f"{prop.major}.{prop.minor}"
        (self._stream,) = self._call("cudaStreamCreate")

    def _call(self, fn: str, *args: Any, unavailable: bool = False) -> tuple[Any, ...]:
        result = getattr(self._rt, fn)(*args)
        err, rest = (result[0], tuple(result[1:])) if isinstance(result, tuple) else (result, ())
        if err != self._rt.cudaError_t.cudaSuccess:
            try:
                name = self._rt.cudaGetErrorName(err)[1].decode()
            except Exception:  # noqa: BLE001
                name = str(err)
            cls = BackendUnavailableError if unavailable else ModelError
            raise cls(f"CUDA {fn} failed: {name}")
        return rest

    def stream_handle(self) -> int:
        s = self._stream
        return int(s.getPtr()) if hasattr(s, "getPtr") else int(s)

    def device_buffer(self, nbytes: int) -> DeviceBuffer:
        (ptr,) = self._call("cudaMalloc", max(1, int(nbytes)))
        ptr = int(ptr)
        return self._keep(DeviceBuffer(ptr, nbytes, free=lambda: self._call("cudaFree", ptr)))

    def host_buffer(self, shape: tuple[int, ...], dtype: Any) -> HostBuffer:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        (ptr,) = self._call("cudaMallocHost", max(1, nbytes))
        ptr = int(ptr)
        raw = (ctypes.c_uint8 * max(1, nbytes)).from_address(ptr)
        array = np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)
        return self._keep(HostBuffer(array, handle=raw, free=lambda: self._call("cudaFreeHost", ptr)))

    def _copy(self, dst: int, src: int, nbytes: int, kind: str) -> None:
        self._call("cudaMemcpyAsync", dst, src, nbytes, getattr(self._rt.cudaMemcpyKind, kind), self._stream)

    def copy_to_device(self, dst: DeviceBuffer, src: HostBuffer) -> None:
        self._copy(dst.ptr, src.ptr, src.array.nbytes, "cudaMemcpyHostToDevice")

    def copy_to_host(self, dst: HostBuffer, src: DeviceBuffer) -> None:
        self._copy(dst.ptr, src.ptr, dst.array.nbytes, "cudaMemcpyDeviceToHost")

    def synchronize(self) -> None:
        self._call("cudaStreamSynchronize", self._stream)

    def close(self) -> None:
        super().close()
        if self._stream is not None:
            with contextlib.suppress(ModelError):
                self._call("cudaStreamDestroy", self._stream)
            self._stream = None


# ---------------------------------------------------------------------------------------
# pycuda
# ---------------------------------------------------------------------------------------
class PyCuda(CudaMemory):
    """CUDA memory from pycuda (driver API; the device's primary context, pushed around each use)."""

    name = "pycuda"

    def __init__(self) -> None:
        super().__init__()
        import pycuda.driver as drv

        drv.init()
        if drv.Device.count() < 1:
            raise BackendUnavailableError("pycuda sees no CUDA device")
        self._drv = drv
        dev = drv.Device(0)
        self.device_name = dev.name()
        major, minor = dev.compute_capability()
        self.compute_capability = f"{major}.{minor}"
        self._ctx = dev.retain_primary_context()
        with self.activate():
            self._stream = drv.Stream()

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        self._ctx.push()
        try:
            yield
        finally:
            self._drv.Context.pop()

    def stream_handle(self) -> int:
        return int(self._stream.handle)

    def device_buffer(self, nbytes: int) -> DeviceBuffer:
        with self.activate():
            alloc = self._drv.mem_alloc(max(1, int(nbytes)))
        return self._keep(DeviceBuffer(int(alloc), nbytes, handle=alloc, free=alloc.free))

    def host_buffer(self, shape: tuple[int, ...], dtype: Any) -> HostBuffer:
        with self.activate():
            array = self._drv.pagelocked_empty(shape, dtype=np.dtype(dtype))
        return self._keep(HostBuffer(array, handle=array))

    def copy_to_device(self, dst: DeviceBuffer, src: HostBuffer) -> None:
        self._drv.memcpy_htod_async(dst.handle, src.array, self._stream)

    def copy_to_host(self, dst: HostBuffer, src: DeviceBuffer) -> None:
        self._drv.memcpy_dtoh_async(dst.array, src.handle, self._stream)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        with self.activate():
            super().close()
            self._stream = None
        self._ctx.detach()


#: (name, class, module that must import) in the order :func:`open_cuda` tries them. The torch-free
#: providers come first, so that serving with TensorRT never imports torch where cuda-python or pycuda
#: is installed (design.md: the TensorRT path imports neither torch nor rosbags).
PROVIDERS: tuple[tuple[str, type[CudaMemory], str], ...] = (
    ("cuda-python", CudaPython, "cuda"),
    ("pycuda", PyCuda, "pycuda.driver"),
    ("torch", TorchCuda, "torch"),
)


def open_cuda(prefer: str | None = None) -> CudaMemory:
    """The first CUDA memory provider that starts (module docstring); ``prefer`` tries one by name only.

    Raises
    ------
    BackendUnavailableError : none starts; the message says why each did not and what to install.
    """
    tried = []
    for name, cls, module in PROVIDERS:
        if prefer is not None and name != prefer:
            continue
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - a broken install raises more than ImportError
            tried.append(f"{name}: not importable ({type(err).__name__})")
            continue
        try:
            return cls()
        except BackendUnavailableError as err:
            tried.append(f"{name}: {err}")
        except Exception as err:  # noqa: BLE001 - CUDA initialisation failures come in many types
            tried.append(
                f"{name}: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            )
    if prefer is not None and not tried:
        raise BackendUnavailableError(f"unknown CUDA memory provider {prefer!r}")
    raise BackendUnavailableError(f"no CUDA memory for TensorRT ({'; '.join(tried)}); {CUDA_INSTALL_HINT}")
