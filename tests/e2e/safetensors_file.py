"""Reading and writing safetensors files with the Python standard library alone, for the end-to-end tests: they check
what optima writes, and build broken inputs, without depending on the reader under test or on numpy/torch.

A tensor is a Tensor(name, dtype, shape, data): data is the raw little-endian bytes as stored, or, from the
functions that decode (tensors, read_checkpoint), an array of floats for F32 tensors.
"""
import array
import collections
import json
import os
import struct

Tensor = collections.namedtuple("Tensor", "name dtype shape data")


def read(path):
    """([Tensor with raw bytes] in the order of their data in the file, the __metadata__ dict or None)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = f.read()
    metadata = header.pop("__metadata__", None)
    entries = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
    return [Tensor(name, info["dtype"], info["shape"], data[info["data_offsets"][0]:info["data_offsets"][1]])
            for name, info in entries], metadata


def write(path, tensors, metadata=None):
    """Writes Tensors (raw bytes) in the given order, the header padded to 8 bytes as the format recommends."""
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = metadata
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + len(t.data)]}
        offset += len(t.data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(t.data for t in tensors))


def floats(raw):
    """The F32 values of raw bytes."""
    values = array.array("f")
    values.frombytes(raw)
    return values


def decoded(t):
    """The tensor with F32 data as floats (other dtypes keep their bytes)."""
    return t._replace(data=floats(t.data)) if t.dtype == "F32" else t


def tensors(path):
    """{name: Tensor} of one file, F32 data decoded to floats."""
    return {t.name: decoded(t) for t in read(path)[0]}


def read_checkpoint(directory, exclude=("masks.safetensors",), raw=False):
    """{name: Tensor} over every *.safetensors file of a checkpoint folder but `exclude`, F32 decoded unless raw."""
    out = {}
    for file in sorted(os.listdir(directory)):
        if file.endswith(".safetensors") and file not in exclude:
            path = os.path.join(directory, file)
            out.update({t.name: t for t in read(path)[0]} if raw else tensors(path))
    return out


def edit(path, change):
    """Rewrites a file with change(list of Tensors with raw bytes) applied to the list in place."""
    items, metadata = read(path)
    change(items)
    write(path, items, metadata)


def edit_floats(path, name, change):
    """Calls change(values, shape) on the F32 values of tensor `name` and writes the result back."""

    def apply(items):
        for i, t in enumerate(items):
            if t.name == name:
                values = floats(t.data)
                change(values, t.shape)
                items[i] = t._replace(data=values.tobytes())
                return
        raise KeyError(name)

    edit(path, apply)
