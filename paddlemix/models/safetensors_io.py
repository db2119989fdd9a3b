"""Read and write safetensors files without torch and without pickles.

The format is an 8-byte little-endian header length, a JSON header mapping each tensor name to its dtype, shape and
byte range, then the raw little-endian data. Reading memory-maps the file and returns one numpy view per tensor, so a
loader can copy tensor by tensor into the model without ever holding a second copy of the whole checkpoint.
bfloat16 has no numpy dtype: such tensors come back as ``uint16`` arrays holding the raw bits (see ``bf16_to_f32``).
"""

import json
import mmap
import os
import struct

import numpy as np

_NP_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,  # raw bits
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_ST_DTYPES = {np.dtype(v).str: k for k, v in _NP_DTYPES.items() if k != "BF16"}

_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint file or folder that cannot be used, with the reason and the path."""


class SafetensorsFile:
    """A memory-mapped safetensors file. ``keys()``, ``dtype(name)``, ``shape(name)``, ``get(name)`` (numpy)."""

    def __init__(self, path):
        self.path = str(path)
        try:
            self._fh = open(self.path, "rb")
        except OSError as e:
            raise CheckpointError(f"cannot open checkpoint file {self.path}: {e.strerror}") from None
        size = os.fstat(self._fh.fileno()).st_size
        if size < 8:
            self.close()
            raise CheckpointError(f"{self.path} is not a safetensors file: only {size} bytes")
        (n,) = struct.unpack("<Q", self._fh.read(8))
        if n > _MAX_HEADER or 8 + n > size:
            self.close()
            raise CheckpointError(
                f"{self.path} is not a valid safetensors file (header length {n} does not fit in {size} bytes): "
                "the file is truncated or not a safetensors file"
            )
        try:
            header = json.loads(self._fh.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            self.close()
            raise CheckpointError(f"{self.path}: corrupt safetensors header ({e})") from None
        if not isinstance(header, dict):
            self.close()
            raise CheckpointError(f"{self.path}: corrupt safetensors header (not a JSON object)")
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        data_len = size - self._data_start
        self._entries = {}
        for name, info in header.items():
            try:
                dtype, shape, (begin, end) = info["dtype"], [int(s) for s in info["shape"]], info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                self.close()
                raise CheckpointError(f"{self.path}: corrupt header entry for tensor '{name}': {info!r}") from None
            if dtype not in _NP_DTYPES:
                self.close()
                raise CheckpointError(f"{self.path}: tensor '{name}' has unsupported dtype {dtype}")
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(_NP_DTYPES[dtype]).itemsize
            if not (0 <= begin <= end <= data_len) or end - begin != nbytes:
                self.close()
                raise CheckpointError(
                    f"{self.path}: tensor '{name}' lies outside the file or has the wrong size "
                    f"(bytes {begin}..{end} of {data_len}): the file is truncated or corrupt"
                )
            self._entries[name] = (dtype, shape, begin)
        self._mmap = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size > 0 else None

    def keys(self):
        return list(self._entries)

    def dtype(self, name):
        return self._entries[name][0]

    def shape(self, name):
        return list(self._entries[name][1])

    def get(self, name):
        """The tensor as a read-only numpy view of the mapped file (BF16 as raw uint16 bits)."""
        dtype, shape, begin = self._entries[name]
        npdt = np.dtype(_NP_DTYPES[dtype]).newbyteorder("<")
        count = int(np.prod(shape, dtype=np.int64))
        arr = np.frombuffer(self._mmap, dtype=npdt, count=count, offset=self._data_start + begin)
        return arr.reshape(shape)

    def release(self, name, start=0, stop=None):
        """Drop the mapped pages of bytes [start, stop) of a tensor that was copied out, so that they no longer count
        in this process's memory (the file stays mapped; a later read maps them in again)."""
        if self._mmap is None or not hasattr(self._mmap, "madvise"):
            return
        dtype, shape, begin = self._entries[name]
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(_NP_DTYPES[dtype]).itemsize
        stop = nbytes if stop is None else min(stop, nbytes)
        first = self._data_start + begin + start
        aligned = first - first % mmap.PAGESIZE
        length = self._data_start + begin + stop - aligned
        if length > 0:
            self._mmap.madvise(mmap.MADV_DONTNEED, aligned, length)

    def close(self):
        mm = getattr(self, "_mmap", None)
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # views still alive; the map closes when they are gone
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def bf16_to_f32(bits):
    """uint16 bfloat16 bits -> float32 values (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x):
    """float32 -> uint16 bfloat16 bits, rounding to nearest even (as torch does)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + (np.uint32(0x7FFF) + ((u >> 16) & 1))
    out = (rounded >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def save_file(tensors, path, metadata=None, bf16_names=()):
    """Write ``{name: numpy array}`` as safetensors. Names in ``bf16_names`` hold uint16 bfloat16 bits."""
    header = {}
    offset = 0
    order = list(tensors)
    for name in order:
        arr = tensors[name]
        if name in bf16_names:
            dt = "BF16"
        else:
            dt = _ST_DTYPES.get(np.dtype(arr.dtype).newbyteorder("<").str)
            if dt is None:
                raise CheckpointError(f"cannot save tensor '{name}' of dtype {arr.dtype}")
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in order:
            f.write(np.ascontiguousarray(tensors[name]).astype(tensors[name].dtype.newbyteorder("<"), copy=False).tobytes())
