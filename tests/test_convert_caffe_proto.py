"""The Caffe protobuf reader against an independent encoder (the `protobuf` package).

The message definitions below are written here from caffe.proto's field numbers and encoded by
Google's protobuf runtime, never by project code. ``encode_net`` is also used by
test_convert_caffe.py.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deeplabv1.convert.caffe_proto import parse_net, read_caffemodel
from deeplabv1.errors import DeepLabError

F = descriptor_pb2.FieldDescriptorProto
OPT, REP = F.LABEL_OPTIONAL, F.LABEL_REPEATED
V1_TYPES = {"Convolution": 4, "InnerProduct": 14, "ReLU": 18, "Pooling": 17, "Data": 5}


@functools.cache
def _classes(packed: bool) -> dict:
    """caffe.proto's NetParameter family (the fields we need plus a few to skip), as classes."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name=f"testcaffe_{int(packed)}.proto", package=f"testcaffe{int(packed)}", syntax="proto2"
    )
    pkg = "." + fdp.package

    def message(name, fields):
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name, pack in fields:
            f = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f"{pkg}.{type_name}"
            if pack is not None:
                f.options.packed = pack
        return msg

    message("BlobShape", [("dim", 1, F.TYPE_INT64, REP, None, packed)])
    message("BlobProto", [
        ("shape", 7, F.TYPE_MESSAGE, OPT, "BlobShape", None),
        ("data", 5, F.TYPE_FLOAT, REP, None, packed),
        ("diff", 6, F.TYPE_FLOAT, REP, None, packed),
        ("double_data", 8, F.TYPE_DOUBLE, REP, None, packed),
        ("num", 1, F.TYPE_INT32, OPT, None, None),
        ("channels", 2, F.TYPE_INT32, OPT, None, None),
        ("height", 3, F.TYPE_INT32, OPT, None, None),
        ("width", 4, F.TYPE_INT32, OPT, None, None),
    ])
    message("ConvolutionParameter", [("num_output", 1, F.TYPE_UINT32, OPT, None, None)])
    message("LayerParameter", [
        ("name", 1, F.TYPE_STRING, OPT, None, None),
        ("type", 2, F.TYPE_STRING, OPT, None, None),
        ("bottom", 3, F.TYPE_STRING, REP, None, None),
        ("top", 4, F.TYPE_STRING, REP, None, None),
        ("blobs", 7, F.TYPE_MESSAGE, REP, "BlobProto", None),
        ("convolution_param", 106, F.TYPE_MESSAGE, OPT, "ConvolutionParameter", None),
    ])
    v1 = message("V1LayerParameter", [
        ("bottom", 2, F.TYPE_STRING, REP, None, None),
        ("top", 3, F.TYPE_STRING, REP, None, None),
        ("name", 4, F.TYPE_STRING, OPT, None, None),
        ("type", 5, F.TYPE_ENUM, OPT, "V1LayerParameter.LayerType", None),
        ("blobs", 6, F.TYPE_MESSAGE, REP, "BlobProto", None),
        ("blobs_lr", 7, F.TYPE_FLOAT, REP, None, None),
    ])
    enum = v1.enum_type.add(name="LayerType")
    for name, number in [("NONE", 0)] + sorted(V1_TYPES.items(), key=lambda kv: kv[1]):
        enum.value.add(name=name.upper(), number=number)
    message("NetParameter", [
        ("name", 1, F.TYPE_STRING, OPT, None, None),
        ("input", 3, F.TYPE_STRING, REP, None, None),
        ("layers", 2, F.TYPE_MESSAGE, REP, "V1LayerParameter", None),
        ("layer", 100, F.TYPE_MESSAGE, REP, "LayerParameter", None),
    ])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    classes = message_factory.GetMessageClassesForFiles([fdp.name], pool)
    return {name.rsplit(".", 1)[-1]: cls for name, cls in classes.items()}


def legacy_shape(shape) -> tuple[int, ...]:
    """Caffe's legacy 4-D (num, channels, height, width): leading axes padded with 1."""
    return (1,) * (4 - len(shape)) + tuple(shape)


def encode_net(layers, *, layout="new", shape_style="shape", packed=True, double=False,
               name="testnet") -> bytes:
    """Serialise [(name, type, [arrays])] as a Caffe NetParameter with Google's protobuf."""
    cls = _classes(packed)
    net = cls["NetParameter"](name=name)
    net.input.append("data")
    for lname, ltype, blobs in layers:
        if layout == "new":
            layer = net.layer.add(name=lname, type=ltype)
            layer.convolution_param.num_output = 7
        else:
            layer = net.layers.add(name=lname, type=V1_TYPES[ltype])
            layer.blobs_lr.extend([1.0, 2.0])
        layer.bottom.append("data")
        layer.top.append(lname)
        for arr in blobs:
            blob = layer.blobs.add()
            if shape_style == "shape":
                blob.shape.SetInParent()  # present even for a 0-d array's empty shape
                blob.shape.dim.extend(arr.shape)
            else:
                blob.num, blob.channels, blob.height, blob.width = legacy_shape(arr.shape)
            flat = np.asarray(arr, np.float64).ravel().tolist()
            (blob.double_data if double else blob.data).extend(flat)
            blob.diff.extend([0.5] * min(3, len(flat)))  # present in real files; must be skipped
    return net.SerializeToString()


def _sample_layers(rng: np.random.Generator):
    return [
        ("data", "Data", []),
        ("conv1_1", "Convolution", [rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)]),
        ("relu1_1", "ReLU", []),
        ("fc6", "InnerProduct", [rng.standard_normal((5, 12)), rng.standard_normal(5)]),
    ]


@pytest.mark.parametrize(
    "layout,shape_style,packed,double",
    list(itertools.product(["new", "v1"], ["shape", "legacy"], [True, False], [False, True])),
)
def test_round_trip_every_encoding(layout, shape_style, packed, double):
    layers = _sample_layers(np.random.default_rng(1))
    data = encode_net(layers, layout=layout, shape_style=shape_style, packed=packed, double=double)
    net_name, parsed = parse_net(data, "x.caffemodel")
    assert net_name == "testnet"
    assert [p.name for p in parsed] == [name for name, _, _ in layers]
    v1_names = {"Data": "DATA", "Convolution": "CONVOLUTION", "ReLU": "RELU",
                "InnerProduct": "INNER_PRODUCT"}  # the enum names of caffe.proto  # fmt: skip
    expect = [ltype if layout == "new" else v1_names[ltype] for _, ltype, _ in layers]
    assert [p.type for p in parsed] == expect
    for (_, _, blobs), layer in zip(layers, parsed):
        assert len(layer.blobs) == len(blobs)
        for want, got in zip(blobs, layer.blobs):
            shape = want.shape if shape_style == "shape" else legacy_shape(want.shape)
            assert got.shape == shape and got.dtype == np.float32
            np.testing.assert_array_equal(got, want.astype(np.float32).reshape(shape))


def test_read_file_and_errors_name_it(tmp_path):
    path = tmp_path / "m.caffemodel"
    path.write_bytes(encode_net(_sample_layers(np.random.default_rng(0))))
    assert [layer.name for layer in read_caffemodel(path)[1]][1] == "conv1_1"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DeepLabError, match="m.caffemodel: malformed Caffe model"):
        read_caffemodel(path)
    with pytest.raises(DeepLabError, match="missing.caffemodel"):
        read_caffemodel(tmp_path / "missing.caffemodel")


def test_both_layouts_in_one_file_rejected():
    layers = _sample_layers(np.random.default_rng(0))[:2]
    data = encode_net(layers, layout="new") + encode_net(layers, layout="v1")
    with pytest.raises(DeepLabError, match="both new `layer` and old `layers`"):
        parse_net(data)


def test_blob_count_mismatch_and_bad_lengths():
    cls = _classes(True)
    net = cls["NetParameter"]()
    blob = net.layer.add(name="conv", type="Convolution").blobs.add()
    blob.shape.dim.extend([2, 3])
    blob.data.extend([1.0] * 5)
    with pytest.raises(DeepLabError, match=r"shape \[2, 3\] \(6 values\) but holds 5"):
        parse_net(net.SerializeToString())
    # a length prefix far beyond the end of the buffer: an error, never a huge allocation
    huge = bytes([0xA2, 0x06]) + bytes([0xFF] * 9 + [0x01])
    with pytest.raises(DeepLabError, match="malformed"):
        parse_net(huge)
    assert parse_net(b"") == ("", [])


def _check_clean(data: bytes) -> str:
    """"parsed" (well-formed result) or "rejected" (DeepLabError naming the file); anything
    else, including another exception, fails the caller's assertion or the test."""
    try:
        name, layers = parse_net(data, "fuzz.caffemodel")
    except DeepLabError as exc:
        return "rejected" if "fuzz.caffemodel" in str(exc) else f"unnamed error: {exc}"
    ok = isinstance(name, str) and all(
        isinstance(layer.name, str) and all(isinstance(b, np.ndarray) for b in layer.blobs)
        for layer in layers
    )
    return "parsed" if ok else "bad result"


VALID = encode_net(_sample_layers(np.random.default_rng(2)), layout="new")
VALID_V1 = encode_net(_sample_layers(np.random.default_rng(3)), layout="v1",
                      shape_style="legacy", packed=False)


def test_every_truncation_is_clean():
    for data in (VALID, VALID_V1):
        for cut in range(len(data)):
            assert _check_clean(data[:cut]) in ("parsed", "rejected")


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    assert _check_clean(data) in ("parsed", "rejected")


@FUZZ
@given(st.sampled_from([VALID, VALID_V1]), st.lists(st.integers(0, 10**6), min_size=1, max_size=8))
def test_fuzz_bit_flips(data, flips):
    buf = bytearray(data)
    for f in flips:
        buf[(f // 8) % len(buf)] ^= 1 << (f % 8)
    assert _check_clean(bytes(buf)) in ("parsed", "rejected")


@FUZZ
@given(st.sampled_from([VALID, VALID_V1]), st.integers(0, 400), st.binary(min_size=1, max_size=12))
def test_fuzz_spliced_bytes(data, at, junk):
    at %= len(data)
    assert _check_clean(data[:at] + junk + data[at:]) in ("parsed", "rejected")


def _blob_net(dims: list[int], legacy: bool) -> bytes:
    """One layer whose only blob declares ``dims`` (int64, any value) and holds no data."""
    cls = _classes(True)
    net = cls["NetParameter"]()
    blob = net.layer.add(name="conv1_1", type="Convolution").blobs.add()
    if legacy:
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(dims)
    return net.SerializeToString()


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 3), st.booleans(),
       st.lists(st.integers(0, 2**63 - 1) | st.integers(0, 2**31 - 1), min_size=4, max_size=4))
def test_fuzz_empty_blob_of_any_declared_shape(zero_at, legacy, dims):
    """An empty blob may declare any other axes: huge ones were a plain numpy ValueError
    ("cannot reshape", "array is too big") without the file's name, a traceback from the CLI."""
    dims[zero_at] = 0
    if legacy:
        dims = [min(d, 2**31 - 1) for d in dims]  # int32 fields
    assert _check_clean(_blob_net(dims, legacy)) in ("parsed", "rejected")


def test_huge_axes_of_an_empty_blob_rejected():
    with pytest.raises(DeepLabError, match="x.caffemodel: .*larger than Caffe allows"):
        parse_net(_blob_net([2**62, 2**62, 0], legacy=False), "x.caffemodel")
    assert parse_net(_blob_net([0, 3, 3, 3], legacy=True))[1][0].blobs[0].shape == (0, 3, 3, 3)


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs")
def test_fifo_caffemodel_is_refused_not_waited_on(tmp_path):
    import os

    os.mkfifo(tmp_path / "m.caffemodel")  # read_bytes waited for a writer forever
    with pytest.raises(DeepLabError, match="m.caffemodel: is a named pipe"):
        read_caffemodel(tmp_path / "m.caffemodel")
