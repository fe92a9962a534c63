"""One typed config per command: dataclass defaults < YAML file < command-line flags.

Every command describes its settings as a dataclass. ``add_config_args`` turns the fields into
flags (``--base-lr``) plus ``--config``; ``resolve_config`` merges them; ``save_config`` writes
the resolved values next to a run's outputs so that every result says where it came from.

A field's metadata may hold a ``check``: a function of a (typed, not None) value that returns
why the value is refused, or None. It applies wherever the value comes from: a YAML file or a
flag (the error names the file, or the command line, and the setting) and a config built in
Python (``check_types``, which every command's ``validate`` calls).

``--config`` takes a YAML file or the name of a config shipped in the package
(``deeplabv1/configs/*.yaml``: ``voc-largefov-stage1`` is ``voc_largefov_stage1.yaml``), so the
paper's runs work from an installed wheel as well as from a clone; ``packaged_configs`` lists them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from deeplabv1.errors import DeepLabError
from deeplabv1.io import atomic_write_text

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Strip Optional; return (type, is_optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def packaged_configs() -> dict[str, Any]:
    """The configs shipped in the package: ``{name: file}``, names hyphenated, sorted.

    The files are ``importlib.resources`` traversables (plain paths for a normal install).
    """
    folder = resources.files("deeplabv1") / "configs"
    files = [f for f in folder.iterdir() if f.name.endswith(".yaml")] if folder.is_dir() else []
    return {f.name[: -len(".yaml")].replace("_", "-"): f for f in sorted(files, key=str)}


def config_summary(file: Any) -> str:
    """The first sentence of a config file's leading comment: what the run is."""
    words = []
    for line in file.read_text().splitlines():
        if not line.startswith("#") or line.startswith("#  "):  # the end, or an example command
            break
        words += line.lstrip("#").split()
    text = " ".join(words)
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def locate_config(value: str | os.PathLike) -> Any:
    """A ``--config`` value -> the file to read: an existing path, else a packaged config's name.

    A path wins over a name. Names match with ``-`` or ``_`` and with or without ``.yaml``.
    """
    path = Path(value)
    if path.is_file():
        return path
    shipped = packaged_configs()
    key = path.name.removesuffix(".yaml").replace("_", "-")
    if str(value) == path.name and key in shipped:
        return shipped[key]
    hint = f"; did you mean --config {key}?" if key in shipped else ""
    names = ", ".join(shipped) or "none"
    raise DeepLabError(f"{value}: config file not found, nor a packaged config "
                       f"(packaged: {names}){hint}")  # fmt: skip


class ListConfigsAction(argparse.Action):
    """``--list-configs``: print the packaged configs (name, what the run is) and exit."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="list the packaged configs (names for --config) and exit"):  # fmt: skip
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        shipped = packaged_configs()
        width = max((len(name) for name in shipped), default=0)
        lines = [f"{name:{width}s}  {config_summary(file)}" for name, file in shipped.items()]
        folder = resources.files("deeplabv1") / "configs"
        lines.append(f"(files in {folder}: copy one to edit it, then --config FILE.yaml)")
        parser._print_message("\n".join(lines) + "\n", sys.stdout)  # as --version does
        parser.exit(0)


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass ``cls``'s field ``name`` (for --help)."""
    return _field_default(next(f for f in dataclasses.fields(cls) if f.name == name))


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add ``--config`` and one flag per field of dataclass ``cls`` (defaults left to the class)."""
    parser.add_argument(
        "--config", default=None, metavar="NAME|FILE.yaml",
        help="settings from a YAML file or a packaged config's name (train --list-configs); "
        "flags override them",
    )  # fmt: skip
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        tp, _ = _base_type(hints[field.name])
        origin = typing.get_origin(tp)
        help_text = field.metadata.get("help", "")
        kwargs: dict[str, Any] = {"default": None, "dest": field.name, "help": help_text}
        if tp is bool:
            # `--flag` alone means true; `--flag false` is accepted too
            kwargs.update(type=_parse_bool, nargs="?", const=True, metavar="BOOL")
        elif origin in (list, tuple):
            inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
            kwargs.update(type=inner if inner in (int, float) else str, nargs="+")
        elif typing.get_origin(tp) is typing.Literal:
            kwargs.update(choices=list(typing.get_args(tp)))
        elif tp in (int, float, str):
            kwargs.update(type=tp)
        else:
            kwargs.update(type=str)
        action = parser.add_argument(_flag(field.name), **kwargs)
        action.shown_default = _field_default(field)  # for --help; the parser default stays None


def _describe(tp: Any) -> str:
    """A type in words, for error messages ("an integer", "one of 'a', 'b'", ...)."""
    base, optional = _base_type(tp)
    origin = typing.get_origin(base)
    if origin is typing.Literal:
        text = "one of " + ", ".join(repr(a) for a in typing.get_args(base))
    elif origin in (list, tuple):
        inner = typing.get_args(base)[0] if typing.get_args(base) else Any
        text = f"a list (each {_describe(inner)})"
    else:
        text = {bool: "true or false", int: "an integer", float: "a number",
                str: "a string"}.get(base, getattr(base, "__name__", str(base)))  # fmt: skip
    return text + (" (or null)" if optional else "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise DeepLabError(f"{where}: a value is required")
    origin = typing.get_origin(base)
    try:
        if base is bool:
            return value if isinstance(value, bool) else _parse_bool(str(value))
        if base in (int, float) and isinstance(value, bool):  # YAML `true` is not a number
            raise ValueError(value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if base is float:
            return float(value)
        if base is str:
            return str(value)
        if origin is typing.Literal:
            if value not in typing.get_args(base):
                raise ValueError(value)
            return value
        if origin in (list, tuple):
            inner = typing.get_args(base)[0] if typing.get_args(base) else Any
            if isinstance(value, (str, int, float)):  # a lone value, not its characters
                raise DeepLabError(f"{where}: expected a list, got {value!r}")
            items = [_coerce(v, inner, where) for v in value]
            return tuple(items) if origin is tuple else items
    except DeepLabError:
        raise
    except (ValueError, TypeError, OverflowError, argparse.ArgumentTypeError) as exc:
        raise DeepLabError(f"{where}: expected {_describe(tp)}, got {value!r}") from exc
    return value


def _fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` already has type ``tp`` (no conversion; bool is not a number)."""
    base, optional = _base_type(tp)
    if value is None:
        return optional
    origin = typing.get_origin(base)
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in typing.get_args(base)
    if origin in (list, tuple):
        inner = typing.get_args(base)[0] if typing.get_args(base) else Any
        return isinstance(value, (list, tuple)) and all(_fits(v, inner) for v in value)
    return True


def _refused(field: dataclasses.Field, value: Any) -> str | None:
    """Why the field's ``check`` (see the module doc) refuses ``value``, or None."""
    check = field.metadata.get("check")
    return None if check is None or value is None else check(value)


def check_types(cfg: Any, where: str) -> None:
    """Raise a DeepLabError naming the first setting of config dataclass ``cfg`` whose value
    does not have its declared type, or that its field's ``check`` refuses (for configs built
    in Python rather than from flags/YAML, e.g. ``TrainConfig(num_classes="21")``)."""
    hints = typing.get_type_hints(type(cfg))
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if not _fits(value, hints[field.name]):
            raise DeepLabError(f"{where}: {field.name} must be {_describe(hints[field.name])}, "
                               f"got {value!r} ({type(value).__name__})")  # fmt: skip
        problem = _refused(field, value)
        if problem is not None:
            raise DeepLabError(f"{where}: {field.name} {problem}")


def _values(cls: type, data: dict[str, Any], source: str) -> dict[str, Any]:
    """``data``'s settings of ``cls`` typed and checked; errors name ``source`` and the key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise DeepLabError(f"{source}: unknown setting(s) {', '.join(unknown)}; "
                           f"known: {', '.join(sorted(fields))}")
    values = {k: _coerce(v, hints[k], f"{source}: {k}") for k, v in data.items()}
    for key, value in values.items():
        problem = _refused(fields[key], value)
        if problem is not None:
            raise DeepLabError(f"{source}: {key}: {problem}")
    return values


def config_from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys and ill-typed or refused values
    (a field's ``check``) by name."""
    return cls(**_values(cls, data, source))


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """One line: ``FILE:LINE:COLUMN: not valid YAML: what`` (1-based, where the parser
    stopped)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else f"{path}"
    what = ": ".join(str(p) for p in (getattr(exc, "context", None), getattr(exc, "problem", None))
                    if p) or str(exc).splitlines()[0]  # fmt: skip
    return f"{where}: not valid YAML: {what}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing a key given twice in one mapping (plain YAML keeps the last
    value silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class says so
                break
            seen[key] = key_node.start_mark.line + 1
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first})",
                    key_node.start_mark)  # fmt: skip
        return super().construct_mapping(node, deep)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping (a file or a packaged config's name), with errors naming the file;
    a key given twice is an error naming its line."""
    path = locate_config(path)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except FileNotFoundError as exc:
        raise DeepLabError(f"{path}: config file not found") from exc
    except yaml.YAMLError as exc:
        raise DeepLabError(_yaml_error(path, exc)) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise DeepLabError(f"{path}: not a config: collections nested too deeply") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise DeepLabError(f"{path}: cannot read the config file ({why})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DeepLabError(f"{path}: expected a mapping of setting: value at the top level")
    return data


def resolve_config(cls: type[T], args: argparse.Namespace) -> T:
    """Merge dataclass defaults, the optional ``--config`` YAML and explicit flags; a bad value
    is reported naming the config file (or the command line) and the setting."""
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if getattr(args, f.name, None) is not None}  # fmt: skip
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None)
    if config_path is not None:  # the file's settings that no flag replaces
        data = {k: v for k, v in load_yaml(config_path).items() if k not in flags}
        values = _values(cls, data, str(config_path))
    from_file = set(values)
    values.update(_values(cls, flags, "command line"))
    cfg = cls(**values)
    if from_file:
        _check_file_values(cfg, from_file, str(config_path))
    return cfg


def _check_file_values(cfg: Any, keys: set[str], source: str) -> None:
    """Run ``cfg.validate()`` (where the config has one) now; a refusal that names one of
    ``keys`` (the settings the config file ``source`` gave) names the file. Other refusals are
    left to the command, which validates when it is ready to."""
    import re

    validate = getattr(cfg, "validate", None)
    if validate is None:
        return
    try:
        validate()
    except DeepLabError as exc:
        message = str(exc)
        named = [k for k in keys if re.search(rf"(?<![\w-]){k}(?!\w)", message)
                 or re.search(rf"{re.escape(_flag(k))}(?![\w-])", message)]  # fmt: skip
        if named:
            # "<command>: <setting> must be ..." -> "<file>: <setting> must be ..."
            raise DeepLabError(f"{source}: {message.split(': ', 1)[-1]}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable dict of a config dataclass."""
    out = {}
    for key, value in dataclasses.asdict(cfg).items():
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
