"""Networks for ``torch.hub``: build one variant, optionally with weights from a path or URL.

``hubconf.py`` at the repository root has one entry point per variant (``deeplab``,
``deeplab_7x7``, ``deeplab_4x4``, ``deeplab_largefov``, ``deeplab_msc``, ``deeplab_msc_largefov``),
each a call of ``load``::

    model = torch.hub.load("path/to/deeplabv1", "deeplab_largefov", source="local",
                           weights="model.pt")

Like torchvision's models, the network is returned in training mode: call ``model.eval()``
before inference. It carries ``class_names`` and ``palette`` (the checkpoint's, or the defaults).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from torch import nn

from deeplabv1.errors import DeepLabError

URL_SCHEMES = ("http", "https", "file")
_HASH = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub's convention: name-<sha256 prefix>.pt
URL_KEY_DIGITS = 16  # hex digits of the URL's SHA-256 that key its cached copy


def weights_path(weights: str | os.PathLike, progress: bool = True, check_hash: bool = False):
    """A local checkpoint path for ``weights``: a path as it is; a ``file://`` URL as the file it
    names (read in place, never cached); an ``http(s)://`` URL downloaded once into
    ``<torch.hub.get_dir()>/checkpoints/<url key>-<file name>``, where the key is the first
    digits of the whole URL's SHA-256, so that two URLs ending in the same file name (every
    run's ``final.pt``) never share a copy. ``check_hash``: the file name holds the first digits
    of the file's SHA-256 (``name-<hash>.pt``, torch.hub's convention) and the file must match
    them, the cached copy of a URL included (a copy that does not is downloaded again)."""
    text = os.fspath(weights)
    url = urlparse(text)
    if url.scheme not in URL_SCHEMES:
        return Path(text)
    name = Path(unquote(url.path)).name
    if not name:
        raise DeepLabError(f"{text}: the URL names no file")
    prefix = None
    if check_hash:
        match = _HASH.search(name)
        if match is None:
            raise DeepLabError(f"{text}: check_hash needs a file name like name-<sha256>.pt")
        prefix = match.group(1)
    if url.scheme == "file":
        if url.netloc not in ("", "localhost"):
            raise DeepLabError(f"{text}: a file URL on another host ({url.netloc})")
        path = Path(url2pathname(url.path))
        if prefix is not None and path.is_file() and not _sha256(path).startswith(prefix):
            raise DeepLabError(f"{text}: the file's SHA-256 does not begin with {prefix}, the "
                               "digits its name gives")  # fmt: skip
        return path
    import torch.hub

    key = hashlib.sha256(text.encode("utf-8")).hexdigest()[:URL_KEY_DIGITS]
    target = Path(torch.hub.get_dir()) / "checkpoints" / f"{key}-{name}"
    if target.is_file() and (prefix is None or _sha256(target).startswith(prefix)):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:  # into a temporary file beside the target, checked, then renamed over it
        torch.hub.download_url_to_file(text, str(target), prefix, progress=progress)
    except (OSError, RuntimeError, ValueError) as exc:
        raise DeepLabError(f"{text}: download failed ({exc})") from exc
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load(
    arch: str,
    weights: str | os.PathLike | None = None,
    *,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    width: float | None = None,
    progress: bool = True,
    check_hash: bool = False,
    **builder_kwargs,
) -> nn.Module:
    """The ``arch`` network (``deeplabv1.models.MODEL_NAMES``), with ``weights`` if given.

    Without weights: ``num_classes`` (default 21), ``width`` (default 1.0) and builder settings
    as ``deeplabv1.models.build_model``. With weights (a checkpoint path or URL): the
    checkpoint's arch must be ``arch``; width and builder settings are the checkpoint's. A
    ``num_classes`` (or ``class_names``) other than the checkpoint's keeps the trunk and
    re-initialises the classifier as released, with a warning: a start for fine-tuning.
    """
    from deeplabv1.checkpoint import load_checkpoint, model_from_checkpoint
    from deeplabv1.data.classes import check_class_names, default_classes
    from deeplabv1.models import build_model

    if class_names is not None:
        class_names = list(check_class_names(class_names, num_classes, "class_names"))
        num_classes = len(class_names)
    if weights is None:
        model = build_model(arch, num_classes=21 if num_classes is None else num_classes,
                            width=1.0 if width is None else width, **builder_kwargs)  # fmt: skip
        classes = default_classes(model.num_classes)
        model.class_names = list(class_names or classes.names)
        model.palette = classes.palette()
        return model
    path = weights_path(weights, progress=progress, check_hash=check_hash)
    ckpt = load_checkpoint(path)
    if ckpt["arch"] != arch:
        entry = ckpt["arch"].replace("-", "_")
        raise DeepLabError(f"{weights}: holds a {ckpt['arch']} network, not {arch} (load it "
                           f"with the {entry!r} entry point)")  # fmt: skip
    if width is not None and float(width) != float(ckpt["width"]):
        raise DeepLabError(f"{weights}: width {ckpt['width']}, not {width}")
    if builder_kwargs:
        ckpt["model_kwargs"] = {**ckpt["model_kwargs"], **builder_kwargs}
    same = num_classes is None or num_classes == int(ckpt["num_classes"])
    stored = ckpt.get("class_names")
    if same and (class_names is None or stored is None or class_names == list(stored)):
        model = model_from_checkpoint(ckpt)
        if class_names is not None:
            model.class_names = class_names
        return model
    from deeplabv1.train.build import init_note, load_init_weights

    n = int(ckpt["num_classes"]) if num_classes is None else num_classes
    model = build_model(arch, num_classes=n, width=ckpt["width"], **ckpt["model_kwargs"])
    classes = default_classes(n)
    model.class_names = list(class_names or classes.names)
    model.palette = classes.palette()
    fresh = load_init_weights(model, ckpt, model.class_names if class_names else None)
    warnings.warn(init_note(model, str(weights), ckpt, fresh), stacklevel=3)
    return model
