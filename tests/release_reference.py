"""An independent reading of the release: a numpy forward of its test prototxts and its
caffemodel layout, written from the prototxt text and the DeepLab fork's Caffe semantics.

Test helper, not a test module; nothing here imports the project.

- :func:`reference_scores` runs a parsed ``*_test.prototxt`` layer by layer on an RGB image as
  the fork's Caffe does: the ``IMAGE_SEG_DATA`` transform (BGR minus the mean, padded at the
  bottom/right with the mean to ``crop_size``), ``CONVOLUTION`` (``hole`` = dilation), ``RELU``,
  ``POOLING`` (ceil-mode sizes, the last window dropped when it starts in the padding, AVE
  divided by the window clipped to the padded input), ``DROPOUT`` (identity at test),
  ``INTERP`` (``caffe_cpu_interp2``: align-corners bilinear with float32 coordinates),
  ``PADDING`` (negative = crop) and ``ELTWISE`` SUM; the blob written by ``MAT_WRITE`` is then
  cut to the image (``raw_result(1:img_row, 1:img_col, :)`` of the authors' MATLAB scripts).
- :func:`release_caffemodel` writes a trained network in the release's layout: a V1
  ``NetParameter`` (``layers`` = 2) of the fork's ``LayerParameter`` with its ``LayerType`` enum,
  every layer of the train prototxt's TRAIN phase in order with its bottoms, tops, ``blobs_lr`` and
  ``weight_decay``, and the weights as legacy 4-D ``BlobProto`` (num, channels, height, width),
  encoded by Google's protobuf runtime from message definitions written here.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from release_files import Message

MEAN_BGR = (104.008, 116.669, 122.675)

# LayerParameter.LayerType of the DeepLab fork's caffe.proto (corenel/deeplab-public)
FORK_LAYER_TYPES = {
    "NONE": 0, "ABSVAL": 35, "ACCURACY": 1, "ADAPTIVE_BIAS_CHANNEL": 50, "ARGMAX": 30, "BNLL": 2,
    "BIAS_CHANNEL": 47, "CENSOR_LABEL": 49, "CHANNEL_AGGREGATOR": 51, "CONCAT": 3,
    "CONTRASTIVE_LOSS": 37, "CONVOLUTION": 4, "DATA": 5, "DENSE_CRF": 45, "DOMINANT_CHANNEL": 46,
    "DROPOUT": 6, "DUMMY_DATA": 32, "EUCLIDEAN_LOSS": 7, "ELTWISE": 25, "EXP": 38, "FLATTEN": 8,
    "GAIN_CHANNEL": 55, "HDF5_DATA": 9, "HDF5_OUTPUT": 10, "HINGE_LOSS": 28, "HISTOGRAM": 53,
    "IGNORE_OVERLAY": 52, "IM2COL": 11, "IMAGE_DATA": 12, "IMAGE_SEG_DATA": 39,
    "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14, "INTERP": 41, "LRN": 15, "MAT_READ": 44,
    "MAT_WRITE": 43, "MEMORY_DATA": 29, "MULTINOMIAL_LOGISTIC_LOSS": 16, "MVN": 34, "ONEHOT": 56,
    "PADDING": 42, "POOLING": 17, "POWER": 26, "RELATIVE_ERROR": 54, "RELU": 18,
    "SEG_ACCURACY": 40, "SIGMOID": 19, "SIGMOID_CROSS_ENTROPY_LOSS": 27, "SILENCE": 36,
    "SOFTMAX": 20, "SOFTMAX_LOSS": 21, "SPLIT": 22, "SLICE": 33, "TANH": 23, "THRESHOLD": 31,
    "UNIQUE_LABEL": 48, "WINDOW_DATA": 24,
}  # fmt: skip


def _p(layer: Message, key: str) -> Message:
    return layer.one(key) or Message()


# ---------------------------------------------------------------------------- layers (numpy)


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int, hole: int):
    """Caffe convolution of x (C, H, W) with w (O, C, k, k), dilation ``hole``."""
    k = w.shape[-1]
    k_eff = hole * (k - 1) + 1
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    ho = (xp.shape[1] - k_eff) // stride + 1
    wo = (xp.shape[2] - k_eff) // stride + 1
    out = np.zeros((w.shape[0], ho, wo)) + b[:, None, None]
    for i in range(k):
        for j in range(k):
            tap = xp[:, i * hole : i * hole + stride * (ho - 1) + 1 : stride,
                     j * hole : j * hole + stride * (wo - 1) + 1 : stride]  # fmt: skip
            out += np.tensordot(w[:, :, i, j], tap, axes=(1, 0))
    return out


def pool(x: np.ndarray, mode: str, k: int, stride: int, pad: int) -> np.ndarray:
    """Caffe's PoolingLayer (MAX or AVE) on x (C, H, W)."""
    c, h, w = x.shape
    sizes = []
    for n in (h, w):
        out = int(math.ceil((n + 2 * pad - k) / stride)) + 1
        if pad and (out - 1) * stride >= n + pad:
            out -= 1
        sizes.append(out)
    (ho, wo) = sizes
    span_h, span_w = (ho - 1) * stride + k, (wo - 1) * stride + k
    fill = -np.inf if mode == "MAX" else 0.0
    xp = np.pad(x, ((0, 0), (pad, max(0, span_h - pad - h)), (pad, max(0, span_w - pad - w))),
                constant_values=fill)  # fmt: skip
    taps = [xp[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
            for i in range(k) for j in range(k)]  # fmt: skip
    if mode == "MAX":
        return np.max(taps, axis=0)

    # AVE: divide by the window clipped to the padded input [-pad, n + pad)
    def counts(n, o):
        start = np.arange(o) * stride - pad
        return np.minimum(start + k, n + pad) - start

    return np.sum(taps, axis=0) / (counts(h, ho)[:, None] * counts(w, wo)[None, :])


def interp(x: np.ndarray, height_out: int, width_out: int, beg: int = 0, end: int = 0):
    """caffe_cpu_interp2 on x (C, H, W) cropped by ``beg`` / ``end`` (<= 0) on both axes."""
    x = x[:, -beg : x.shape[1] + end, -beg : x.shape[2] + end]
    _, h1, w1 = x.shape

    def axis(n_in, n_out):
        r = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0)
        pos = r * np.arange(n_out, dtype=np.float32)  # float, as Caffe computes it
        i0 = pos.astype(np.int64)
        lam = (pos - i0).astype(np.float64)
        return i0, np.minimum(i0 + 1, n_in - 1), lam

    if (h1, w1) == (height_out, width_out):
        return x.copy()
    y0, y1, ly = axis(h1, height_out)
    x0, x1, lx = axis(w1, width_out)
    top = x[:, y0][:, :, x0] * (1 - lx) + x[:, y0][:, :, x1] * lx
    bottom = x[:, y1][:, :, x0] * (1 - lx) + x[:, y1][:, :, x1] * lx
    return top * (1 - ly)[:, None] + bottom * ly[:, None]


def image_seg_data(rgb: np.ndarray, transform: Message) -> np.ndarray:
    """The TEST phase of the fork's ImageSegDataLayer: pad with the mean, subtract, crop."""
    crop = transform.one("crop_size")
    mean = np.asarray(transform["mean_value"], np.float64)
    bgr = rgb[:, :, ::-1].astype(np.float64)
    h, w = bgr.shape[:2]
    padded = np.empty((max(h, crop), max(w, crop), 3))
    padded[:] = mean
    padded[:h, :w] = bgr
    top, left = (padded.shape[0] - crop) // 2, (padded.shape[1] - crop) // 2  # middle crop
    return (padded[top : top + crop, left : left + crop] - mean).transpose(2, 0, 1)


def reference_scores(
    net: list[Message], weights: dict[str, tuple[np.ndarray, np.ndarray]], rgb: np.ndarray
) -> np.ndarray:
    """Run the TEST-phase layers ``net`` on ``rgb`` (H, W, 3) uint8; the MAT_WRITE blob, cut to
    the image (C, H, W), float64."""
    blobs: dict[str, np.ndarray] = {}
    written = None
    for layer in net:
        kind, name = layer.one("type"), layer.one("name")
        bottoms, tops = layer.get("bottom", []), layer.get("top", [])
        if kind == "IMAGE_SEG_DATA":
            blobs[tops[0]] = image_seg_data(rgb, _p(layer, "transform_param"))
            continue
        if kind in ("SILENCE", "SEG_ACCURACY"):  # no output the maps depend on
            continue
        x = blobs[bottoms[0]] if bottoms else None
        if kind == "CONVOLUTION":
            p = _p(layer, "convolution_param")
            w, b = weights[name]
            y = conv(x, w, b, p.one("stride", 1), p.one("pad", 0), p.one("hole", 1))
        elif kind == "RELU":
            y = np.maximum(x, 0)
        elif kind == "DROPOUT":
            y = x
        elif kind == "POOLING":
            p = _p(layer, "pooling_param")
            y = pool(x, p.one("pool", "MAX"), p.one("kernel_size"), p.one("stride", 1),
                     p.one("pad", 0))  # fmt: skip
        elif kind == "INTERP":
            p = _p(layer, "interp_param")
            beg, end = p.one("pad_beg", 0), p.one("pad_end", 0)
            h_eff, w_eff = x.shape[1] + beg + end, x.shape[2] + beg + end
            zoom = p.one("zoom_factor")
            y = interp(x, h_eff + (h_eff - 1) * (zoom - 1), w_eff + (w_eff - 1) * (zoom - 1),
                       beg, end)  # fmt: skip
        elif kind == "PADDING":
            p = _p(layer, "padding_param")
            beg, end = p.one("pad_beg", 0), p.one("pad_end", 0)
            assert beg <= 0 and end <= 0
            y = x[:, -beg : x.shape[1] + end, -beg : x.shape[2] + end]
        elif kind == "ELTWISE":
            assert _p(layer, "eltwise_param").one("operation") == "SUM"
            y = np.zeros_like(blobs[bottoms[0]])
            for bottom in bottoms:
                y = y + blobs[bottom]
        elif kind == "MAT_WRITE":
            written = blobs[bottoms[0]]
            continue
        else:
            raise AssertionError(f"layer type {kind} is not expected in a test network")
        blobs[tops[0]] = y
    assert written is not None, "the test network writes no blob"
    return written[:, : rgb.shape[0], : rgb.shape[1]]


# ---------------------------------------------------------------------------- weights


def random_weights(net: list[Message], width: float, rng: np.random.Generator) -> dict:
    """{layer name: (weight (O, C, k, k), bias (O,))} for every CONVOLUTION of ``net`` with
    channels scaled by ``width`` (classifier outputs kept), He-normal weights, small biases."""
    channels = {"data": 3}
    out = {}
    for layer in net:
        kind, tops, bottoms = layer.one("type"), layer.get("top", []), layer.get("bottom", [])
        if kind == "IMAGE_SEG_DATA":
            continue
        if kind == "CONVOLUTION":
            p = _p(layer, "convolution_param")
            num = p.one("num_output")
            o = num if num == 21 else round(num * width)
            c, k = channels[bottoms[0]], p.one("kernel_size")
            w = rng.standard_normal((o, c, k, k)) * math.sqrt(2.0 / (c * k * k))
            out[layer.one("name")] = (w, rng.standard_normal(o) * 0.1)
            channels[tops[0]] = o
        elif tops and bottoms:
            channels[tops[0]] = channels[bottoms[0]]
    return out


# ---------------------------------------------------------------------------- caffemodel


@functools.cache
def _fork_classes() -> dict:
    F = descriptor_pb2.FieldDescriptorProto
    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    fdp = descriptor_pb2.FileDescriptorProto(name="deeplab_fork.proto", package="forkcaffe",
                                             syntax="proto2")  # fmt: skip

    def message(name, fields):
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name, packed in fields:
            f = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f".forkcaffe.{type_name}"
            if packed:
                f.options.packed = True
        return msg

    message("BlobProto", [
        ("num", 1, F.TYPE_INT32, opt, None, False),
        ("channels", 2, F.TYPE_INT32, opt, None, False),
        ("height", 3, F.TYPE_INT32, opt, None, False),
        ("width", 4, F.TYPE_INT32, opt, None, False),
        ("data", 5, F.TYPE_FLOAT, rep, None, True),
        ("diff", 6, F.TYPE_FLOAT, rep, None, True),
    ])  # fmt: skip
    layer = message("LayerParameter", [
        ("bottom", 2, F.TYPE_STRING, rep, None, False),
        ("top", 3, F.TYPE_STRING, rep, None, False),
        ("name", 4, F.TYPE_STRING, opt, None, False),
        ("type", 5, F.TYPE_ENUM, opt, "LayerParameter.LayerType", False),
        ("blobs", 6, F.TYPE_MESSAGE, rep, "BlobProto", False),
        ("blobs_lr", 7, F.TYPE_FLOAT, rep, None, False),
        ("weight_decay", 8, F.TYPE_FLOAT, rep, None, False),
    ])  # fmt: skip
    enum = layer.enum_type.add(name="LayerType")
    for name, number in sorted(FORK_LAYER_TYPES.items(), key=lambda kv: kv[1]):
        enum.value.add(name=name, number=number)
    message("NetParameter", [
        ("name", 1, F.TYPE_STRING, opt, None, False),
        ("layers", 2, F.TYPE_MESSAGE, rep, "LayerParameter", False),
    ])  # fmt: skip
    pool_ = descriptor_pool.DescriptorPool()
    pool_.Add(fdp)
    classes = message_factory.GetMessageClassesForFiles([fdp.name], pool_)
    return {name.rsplit(".", 1)[-1]: cls for name, cls in classes.items()}


def release_caffemodel(train_net: list[Message], weights: dict, net_name: str) -> bytes:
    """A snapshot of the TRAIN network ``train_net`` holding ``weights``, in the fork's format."""
    cls = _fork_classes()
    net = cls["NetParameter"](name=net_name)
    for spec in train_net:
        layer = net.layers.add(name=spec.one("name"), type=FORK_LAYER_TYPES[spec.one("type")])
        layer.bottom.extend(spec.get("bottom", []))
        layer.top.extend(spec.get("top", []))
        layer.blobs_lr.extend(float(v) for v in spec.get("blobs_lr", []))
        layer.weight_decay.extend(float(v) for v in spec.get("weight_decay", []))
        if spec.one("type") != "CONVOLUTION":
            continue
        w, b = weights[spec.one("name")]
        for array, dims in ((w, w.shape), (b, (1, 1, 1, b.size))):
            blob = layer.blobs.add()
            blob.num, blob.channels, blob.height, blob.width = dims
            blob.data.extend(np.asarray(array, np.float32).ravel().tolist())
    return net.SerializeToString()


def vgg16_caffemodel(width: float, rng: np.random.Generator) -> bytes:
    """ImageNet VGG16 (``VGG_ILSVRC_16_layers``) in the old V1 layout, channels x ``width``:
    convolutions, then fc6 / fc7 / fc8 as INNER_PRODUCT matrices (legacy 1 x 1 x out x in)."""
    cls = _fork_classes()
    net = cls["NetParameter"](name="VGG_ILSVRC_16_layers")

    def add(name, kind, *arrays):
        layer = net.layers.add(name=name, type=FORK_LAYER_TYPES[kind])
        for array in arrays:
            blob = layer.blobs.add()
            blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - array.ndim) + array.shape
            blob.data.extend(np.asarray(array, np.float32).ravel().tolist())

    add("data", "DATA")
    c = 3
    blocks = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
    for b, (channels, convs) in enumerate(blocks, 1):
        for i in range(1, convs + 1):
            o = round(channels * width)
            w = rng.standard_normal((o, c, 3, 3)) * math.sqrt(2.0 / (9 * c))
            add(f"conv{b}_{i}", "CONVOLUTION", w, rng.standard_normal(o) * 0.1)
            add(f"relu{b}_{i}", "RELU")
            c = o
        add(f"pool{b}", "POOLING")
    fc, n_in = round(4096 * width), c * 49
    for name, o, i in (("fc6", fc, n_in), ("fc7", fc, fc), ("fc8", 1000, fc)):
        w = rng.standard_normal((o, i)) * math.sqrt(2.0 / i)
        add(name, "INNER_PRODUCT", w, rng.standard_normal(o) * 0.1)
        if name != "fc8":
            add(f"relu{name[2]}", "RELU")
            add(f"drop{name[2]}", "DROPOUT")
    return net.SerializeToString()
