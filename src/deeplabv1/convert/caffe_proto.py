"""A minimal reader of Caffe's binary ``.caffemodel`` files (protobuf wire format), without Caffe.

This is the project's only binary-format parser. It understands just what weight import needs
(field numbers from BVLC ``caffe.proto``):

- ``NetParameter``: ``name`` = 1, ``layer`` = 100 (``LayerParameter``), ``layers`` = 2 (the old
  ``V1LayerParameter``); a file holding both is rejected, as Caffe does.
- ``LayerParameter``: ``name`` = 1, ``type`` = 2 (string), ``blobs`` = 7.
- ``V1LayerParameter``: ``name`` = 4, ``type`` = 5 (enum, reported by the DeepLab fork's names,
  ``V1_LAYER_TYPES``), ``blobs`` = 6; a nested V0 layer (field 1) is rejected with a hint to
  upgrade the file with Caffe's tools.
- ``BlobProto``: ``shape`` = 7 (``BlobShape.dim`` = 1, packed or not), legacy ``num``,
  ``channels``, ``height``, ``width`` = 1..4, ``data`` = 5 (float), ``double_data`` = 8 (double),
  each packed or not. As in Caffe's ``Blob::FromProto``, legacy dimensions win when present and
  ``double_data`` wins when non-empty.

Every length is checked against the bytes left, so malformed or truncated input raises
``DeepLabError`` and nothing else; unknown fields are skipped.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from deeplabv1.errors import DeepLabError

MAX_BLOB_AXES = 32  # Caffe's kMaxBlobAxes
MAX_BLOB_COUNT = 2**31 - 1  # Caffe's Blob::Reshape limit (INT_MAX) on each axis and the count

# The old V1 layer type enum as the DeepLab fork of Caffe defines it (its caffe.proto), by the
# fork's names. Values 0..38 are upstream Caffe's too; from 39 on the fork has its own layers
# (upstream's V1 39 is DECONVOLUTION, the fork's IMAGE_SEG_DATA). Other values: "V1:<n>".
V1_LAYER_TYPES = dict(enumerate((
    "NONE", "ACCURACY", "BNLL", "CONCAT", "CONVOLUTION", "DATA", "DROPOUT", "EUCLIDEAN_LOSS",
    "FLATTEN", "HDF5_DATA", "HDF5_OUTPUT", "IM2COL", "IMAGE_DATA", "INFOGAIN_LOSS",
    "INNER_PRODUCT", "LRN", "MULTINOMIAL_LOGISTIC_LOSS", "POOLING", "RELU", "SIGMOID", "SOFTMAX",
    "SOFTMAX_LOSS", "SPLIT", "TANH", "WINDOW_DATA", "ELTWISE", "POWER",
    "SIGMOID_CROSS_ENTROPY_LOSS", "HINGE_LOSS", "MEMORY_DATA", "ARGMAX", "THRESHOLD",
    "DUMMY_DATA", "SLICE", "MVN", "ABSVAL", "SILENCE", "CONTRASTIVE_LOSS", "EXP",
    "IMAGE_SEG_DATA", "SEG_ACCURACY", "INTERP", "PADDING", "MAT_WRITE", "MAT_READ", "DENSE_CRF",
    "DOMINANT_CHANNEL", "BIAS_CHANNEL", "UNIQUE_LABEL", "CENSOR_LABEL", "ADAPTIVE_BIAS_CHANNEL",
    "CHANNEL_AGGREGATOR", "IGNORE_OVERLAY", "HISTOGRAM", "RELATIVE_ERROR", "GAIN_CHANNEL",
    "ONEHOT",
)))  # fmt: skip

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class CaffeLayer(NamedTuple):
    """One layer of a Caffe net: its name, type and weight blobs (numpy arrays, Caffe shapes)."""

    name: str
    type: str
    blobs: list[np.ndarray]


class _Malformed(Exception):
    """Internal: a description of what is wrong, turned into DeepLabError with the file name."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 70, 7):
        if pos >= end:
            raise _Malformed(f"truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result >> 64:
                raise _Malformed(f"varint wider than 64 bits ending at byte {pos}")
            return result, pos
    raise _Malformed(f"varint longer than 10 bytes ending at byte {pos}")


def _fields(buf: memoryview, start: int, end: int):
    """Yield (field number, wire type, value, position) for a message in buf[start:end].

    value is an int for varints and a (start, end) byte range for every other wire type.
    """
    pos = start
    while pos < end:
        at = pos
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Malformed(f"field number 0 at byte {at}")
        if wire == VARINT:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value, at
            continue
        if wire == LENGTH:
            size, pos = _varint(buf, pos, end)
        elif wire == FIXED64:
            size = 8
        elif wire == FIXED32:
            size = 4
        else:
            raise _Malformed(f"unsupported wire type {wire} (field {field}) at byte {at}")
        if size > end - pos:
            raise _Malformed(f"field {field} at byte {at} claims {size} bytes, "
                             f"only {end - pos} left")
        yield field, wire, (pos, pos + size), at
        pos += size


def _expect(wire: int, allowed: tuple[int, ...], what: str, at: int) -> None:
    if wire not in allowed:
        raise _Malformed(f"{what} at byte {at} has wire type {wire}, expected {allowed}")


def _string(buf: memoryview, span: tuple[int, int], what: str) -> str:
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Malformed(f"{what} at byte {span[0]} is not UTF-8") from exc


def _int64(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value


def _blob_shape(buf: memoryview, span: tuple[int, int]) -> list[int]:
    dims: list[int] = []
    for field, wire, value, at in _fields(buf, *span):
        if field != 1:
            continue
        _expect(wire, (VARINT, LENGTH), "BlobShape.dim", at)
        if wire == VARINT:
            dims.append(_int64(value))
        else:
            pos, end = value
            while pos < end:
                dim, pos = _varint(buf, pos, end)
                dims.append(_int64(dim))
        if len(dims) > MAX_BLOB_AXES:
            raise _Malformed(f"blob shape at byte {at} has more than {MAX_BLOB_AXES} axes")
    return dims


def _numbers(buf: memoryview, wire: int, value, item: int, packed_wire: int, what: str,
             at: int, into: bytearray) -> None:
    """Append a packed run (wire type 2) or one unpacked number's raw bytes to ``into``."""
    _expect(wire, (LENGTH, packed_wire), what, at)
    start, end = value
    if (end - start) % item:
        raise _Malformed(f"{what} at byte {at}: {end - start} bytes is not a multiple of {item}")
    into += buf[start:end]


def _blob(buf: memoryview, span: tuple[int, int]) -> np.ndarray:
    shape: list[int] | None = None
    legacy: dict[int, int] = {}
    floats, doubles = bytearray(), bytearray()  # raw little-endian values, as in the file
    for field, wire, value, at in _fields(buf, *span):
        if field == 7:
            _expect(wire, (LENGTH,), "BlobProto.shape", at)
            shape = _blob_shape(buf, value)
        elif field in (1, 2, 3, 4):
            _expect(wire, (VARINT,), "BlobProto legacy dimension", at)
            legacy[field] = _int64(value)
        elif field == 5:
            _numbers(buf, wire, value, 4, FIXED32, "BlobProto.data", at, floats)
        elif field == 8:
            _numbers(buf, wire, value, 8, FIXED64, "BlobProto.double_data", at, doubles)
    if legacy:
        dims = [legacy.get(k, 0) for k in (1, 2, 3, 4)]
    elif shape is not None:
        dims = shape
    else:
        dims = None  # no shape at all: keep the values as a vector
    data = np.frombuffer(doubles, "<f8") if doubles else np.frombuffer(floats, "<f4")
    if dims is None:
        dims = [len(data)]
    if any(d < 0 for d in dims):
        raise _Malformed(f"blob at byte {span[0]} has a negative dimension {dims}")
    # an empty blob may declare any other axes; numpy cannot make arrays of absurd shapes
    if math.prod(d for d in dims if d) > MAX_BLOB_COUNT:
        raise _Malformed(f"blob at byte {span[0]} has shape {dims}, larger than Caffe allows "
                         f"({MAX_BLOB_COUNT} values)")
    count = math.prod(dims)
    if count != len(data):
        raise _Malformed(f"blob at byte {span[0]} has shape {dims} ({count} values) "
                         f"but holds {len(data)} values")
    return data.astype(np.float32).reshape(dims)


def _layer(buf: memoryview, span: tuple[int, int], v1: bool) -> CaffeLayer:
    name_field, type_field, blobs_field = (4, 5, 6) if v1 else (1, 2, 7)
    name, type_name, blobs = "", "", []
    for field, wire, value, at in _fields(buf, *span):
        if field == name_field:
            _expect(wire, (LENGTH,), "layer name", at)
            name = _string(buf, value, "layer name")
        elif field == type_field:
            if v1:
                _expect(wire, (VARINT,), "V1 layer type", at)
                type_name = V1_LAYER_TYPES.get(value, f"V1:{value}")
            else:
                _expect(wire, (LENGTH,), "layer type", at)
                type_name = _string(buf, value, "layer type")
        elif field == blobs_field:
            _expect(wire, (LENGTH,), "layer blob", at)
            blobs.append(_blob(buf, value))
        elif v1 and field == 1:
            raise _Malformed("V0 layer definitions are not supported: upgrade the file with "
                             "Caffe's upgrade_net_proto_binary first")
    return CaffeLayer(name, type_name, blobs)


def parse_net(data: bytes | memoryview, source: str = "caffemodel") -> tuple[str, list[CaffeLayer]]:
    """Parse a serialised ``NetParameter``: returns (net name, layers in file order)."""
    buf = memoryview(data).cast("B")
    net_name, new, old = "", [], []
    try:
        for field, wire, value, at in _fields(buf, 0, len(buf)):
            if field == 1:
                _expect(wire, (LENGTH,), "net name", at)
                net_name = _string(buf, value, "net name")
            elif field == 100:
                _expect(wire, (LENGTH,), "layer", at)
                new.append(_layer(buf, value, v1=False))
            elif field == 2:
                _expect(wire, (LENGTH,), "V1 layers", at)
                old.append(_layer(buf, value, v1=True))
    except _Malformed as exc:
        raise DeepLabError(f"{source}: malformed Caffe model ({exc})") from None
    if new and old:
        raise DeepLabError(f"{source}: holds both new `layer` and old `layers` definitions")
    return net_name, new or old


def read_caffemodel(path: str | os.PathLike) -> tuple[str, list[CaffeLayer]]:
    """Read a ``.caffemodel`` file: (net name, layers). Errors name the file."""
    from deeplabv1.io import regular_file

    path = Path(path)
    regular_file(path, "Caffe model")  # a FIFO would be waited on forever
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DeepLabError(f"{path}: cannot read Caffe model ({exc.strerror or exc})") from exc
    if not data:
        raise DeepLabError(f"{path}: not a Caffe model: the file is empty")
    return parse_net(data, str(path))
