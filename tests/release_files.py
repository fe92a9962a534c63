"""The authors' release files (``../shared/release``), read by a prototxt parser written here.

Test helper, not a test module. The parser knows only the protobuf text format (comments,
``name: value``, ``name { ... }`` / ``name: { ... }``), nothing of Caffe or of this project, so
the conformance tests compare the project against the files themselves. ``${NUM_LABELS}`` and
``${EXP}`` are substituted as the authors' ``run_pascal.sh`` does for PASCAL VOC (21, voc12).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RELEASE_DIR = REPO.parent / "shared" / "release"

# our arch name -> the release's file prefix
VARIANTS = {
    "deeplab": "DeepLab",
    "deeplab-msc": "DeepLab-MSc",
    "deeplab-largefov": "DeepLab-LargeFOV",
    "deeplab-msc-largefov": "DeepLab-MSc-LargeFOV",
}
SUBSTITUTIONS = {"NUM_LABELS": "21", "EXP": "voc12"}

_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|[{}:]|[^\s{}:"#]+')


class Message(dict):
    """A parsed message: field name -> list of values (str, int, float or Message)."""

    def one(self, name: str, default=None):
        """The single value of ``name`` (``default`` when absent); repeated fields refuse."""
        values = self.get(name, [])
        if len(values) > 1:
            raise ValueError(f"{name} is repeated: {values}")
        return values[0] if values else default


def _scalar(token: str):
    if token.startswith('"'):
        return bytes(token[1:-1], "utf-8").decode("unicode_escape")
    for kind in (int, float):
        try:
            return kind(token)
        except ValueError:
            pass
    return token  # an enum identifier (MAX, CONVOLUTION, TRAIN, ...)


def parse_prototxt(text: str) -> Message:
    """Parse protobuf text format into nested :class:`Message` objects."""
    for key, value in SUBSTITUTIONS.items():
        text = text.replace("${" + key + "}", value)
    tokens = [t for t in _TOKEN.findall(text) if t.strip() and not t.startswith("#")]
    pos = 0

    def message(closing: bool) -> Message:
        nonlocal pos
        msg = Message()
        while pos < len(tokens):
            name = tokens[pos]
            if name == "}":
                if not closing:
                    raise ValueError("unbalanced '}'")
                pos += 1
                return msg
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            if tokens[pos] == "{":
                pos += 1
                value = message(closing=True)
            else:
                value = _scalar(tokens[pos])
                pos += 1
            msg.setdefault(name, []).append(value)
        if closing:
            raise ValueError("missing '}'")
        return msg

    return message(closing=False)


def release_dir() -> Path:
    """The release folder, or skip the test with the reason."""
    if not RELEASE_DIR.is_dir():
        pytest.skip(f"the authors' release files are not at {RELEASE_DIR} (expected ../shared)")
    return RELEASE_DIR


def read_release(variant: str, kind: str) -> Message:
    """``kind`` in train, test, solver, solver2 of our ``variant`` name."""
    return parse_prototxt((release_dir() / f"{VARIANTS[variant]}_{kind}.prototxt").read_text())


def phase_layers(net: Message, phase: str) -> list[Message]:
    """The layers of ``net`` that Caffe instantiates in ``phase`` (TRAIN or TEST)."""
    out = []
    for layer in net.get("layers", []):
        rules = layer.get("include", [])
        if not rules or any(rule.one("phase") == phase for rule in rules):
            out.append(layer)
    return out


def layer_named(layers: list[Message], name: str) -> Message:
    (found,) = [layer for layer in layers if layer.one("name") == name]
    return found
