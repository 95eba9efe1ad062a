#!/usr/bin/env python3
"""Convert Resemblyzer's GE2E speaker encoder (``resemblyzer/pretrained.pt``, a legacy
torch pickle, Apache-2.0) into ``cesard/data/ge2e.npz`` without torch: the weights the
``diarize`` feature reads (cesard/speakers.py). Run once when the model changes:

    pip download --no-deps -d /tmp/rz Resemblyzer==0.1.4
    python packaging/convert_ge2e.py /tmp/rz/Resemblyzer-0.1.4-py3-none-any.whl

The legacy format: pickles of a magic number, the protocol, system info, then the
object (tensors as persistent ids naming a storage), then the storage keys, then each
storage's raw data (an int64 element count, then the elements)."""

from __future__ import annotations

import io
import pickle
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "LongStorage": np.int64,
          "IntStorage": np.int32, "HalfStorage": np.float16}
OUT = Path(__file__).resolve().parents[1] / "cesard" / "data" / "ge2e.npz"


class Tensor:
    def __init__(self, storage: Any, offset: int, size: tuple[int, ...],
                 stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class Storage:
    def __init__(self, kind: str, key: str, numel: int) -> None:
        self.kind, self.key, self.numel = kind, key, numel
        self.data: np.ndarray | None = None


class Reader(pickle.Unpickler):
    def __init__(self, f: Any) -> None:
        super().__init__(f)
        self.storages: dict[str, Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return lambda storage, offset, size, stride, *_: Tensor(storage, offset, size,
                                                                    stride)
        if module == "torch" and name in DTYPES:
            return name
        if module == "collections" and name == "OrderedDict":
            import collections
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected {module}.{name}")

    def persistent_load(self, pid: Any) -> Storage:
        _, kind, key, _location, numel, *_ = pid
        if key not in self.storages:
            self.storages[key] = Storage(kind, key, numel)
        return self.storages[key]


def load(data: bytes) -> dict[str, np.ndarray]:
    f = io.BytesIO(data)
    for _ in range(3):  # magic number, protocol version, system info
        pickle.load(f)
    r = Reader(f)
    obj = r.load()
    keys = pickle.load(f)
    for key in keys:
        s = r.storages[key]
        (numel,) = struct.unpack("<q", f.read(8))
        dtype = np.dtype(DTYPES[s.kind])
        s.data = np.frombuffer(f.read(numel * dtype.itemsize), dtype=dtype)
    out = {}
    for name, t in obj["model_state"].items():
        assert t.storage.data is not None
        arr = np.lib.stride_tricks.as_strided(
            t.storage.data[t.offset:], shape=t.size,
            strides=[s * t.storage.data.itemsize for s in t.stride])
        out[name] = np.array(arr, dtype=np.float32)
    return out


def main() -> int:
    src = Path(sys.argv[1])
    if src.suffix == ".whl":
        with zipfile.ZipFile(src) as z:
            data = z.read("resemblyzer/pretrained.pt")
    else:
        data = src.read_bytes()
    weights = load(data)
    OUT.parent.mkdir(exist_ok=True)
    np.savez_compressed(OUT, **{k.replace(".", "_"): v.astype(np.float16)
                                for k, v in weights.items()})
    for k, v in weights.items():
        print(k, v.shape)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
