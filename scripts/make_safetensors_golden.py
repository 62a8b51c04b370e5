#!/usr/bin/env python3
"""A safetensors file written by Hugging Face's own library, for mil's reader test
(tests/io/test_safetensors.cpp). Tested with safetensors==0.8.0 and numpy 2.4:
pip install safetensors numpy.

  scripts/make_safetensors_golden.py      writes tests/io/golden/python.safetensors

The values follow formulas the C++ test recomputes: float tensors (i - 7) * 0.375 (exact in F16,
BF16, F32, F64), integer tensors i * 37 - 100 wrapped to the type, bool i % 3 == 0. BF16 has no
numpy type, so it is passed to the serializer as raw bytes (the upper halves of the F32 values,
exact here), through the library's TensorSpec API (safetensors >= 0.8).
"""
import os

import numpy as np
import safetensors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "io", "golden", "python.safetensors")


def make():
    floats = (np.arange(15, dtype=np.float64) - 7) * 0.375
    tensors = {
        "f64": floats.reshape(3, 5),
        "f32": floats.astype(np.float32).reshape(3, 5),
        "f16": floats.astype(np.float16).reshape(3, 5),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "bool": (np.arange(7) % 3 == 0),
    }
    ints = np.arange(12, dtype=np.int64) * 37 - 100
    for name, t in [("i64", np.int64), ("i32", np.int32), ("i16", np.int16), ("i8", np.int8),
                    ("u8", np.uint8), ("u16", np.uint16), ("u32", np.uint32), ("u64", np.uint64)]:
        tensors[name] = ints.astype(t).reshape(3, 4) if name != "i8" else ints.astype(t)
    # The numpy front end has no BF16: hand the library its raw bytes with a TensorSpec.
    bf16 = (floats.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    tensors["bf16"] = bf16.reshape(3, 5)
    specs = {k: safetensors.TensorSpec(dtype="bfloat16" if k == "bf16" else v.dtype.name,
                                       shape=list(v.shape), data_ptr=v.ctypes.data,
                                       data_len=v.nbytes)
             for k, v in tensors.items()}
    data = safetensors.serialize(specs, metadata={"writer": "scripts/make_safetensors_golden.py"})
    with open(OUT, "wb") as f:
        f.write(data)
    print(f"wrote {OUT} ({len(data)} bytes, safetensors {safetensors.__version__})")


if __name__ == "__main__":
    make()
