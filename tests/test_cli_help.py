"""``--help`` of every sub-command shows every option's default and no repository-only paths."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from deeplabv1.cli import build_parser, main


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every (sub-)command's parser by its name, nested ``data`` actions included."""
    found = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        found[name] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    walk(child, f"{name} {sub}".strip())

    walk(build_parser(), "")
    return found


PARSERS = _parsers()


def _options(parser):
    for action in parser._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            yield action


def _help_of(parser, action) -> str:
    """The option's entry in ``parser``'s help as printed, on one line."""
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    return " ".join(formatter.format_help().split())


def test_every_command_is_covered():
    names = set(PARSERS)
    assert {"train", "eval", "crf-search", "data synth", "data check", "export", "plot"} <= names
    assert len(names) >= 15


@pytest.mark.parametrize("name", sorted(PARSERS), ids=lambda n: n or "deeplabv1")
def test_every_option_has_help_and_its_default(name):
    parser = PARSERS[name]
    for action in _options(parser):
        if isinstance(action, argparse._VersionAction):
            continue
        assert action.help, f"deeplabv1 {name} {action.option_strings[-1]}: no help text"
        shown = getattr(action, "shown_default", action.default)
        if action.required or action.nargs == 0 or shown is None or shown is argparse.SUPPRESS:
            continue
        text = _help_of(parser, action)
        assert "(default: " in text, f"deeplabv1 {name}: {text!r}"


def test_train_help_shows_the_dataclass_defaults():
    """Independent of the formatter: each TrainConfig default appears beside its flag."""
    from deeplabv1.train.config import TrainConfig

    parser = PARSERS["train"]
    by_dest = {a.dest: a for a in _options(parser)}
    shown = 0
    for field in dataclasses.fields(TrainConfig):
        if field.default is None or field.default is dataclasses.MISSING:
            continue
        want = field.default
        want = ("true" if want else "false") if isinstance(want, bool) else str(want)
        assert f"(default: {want})" in _help_of(parser, by_dest[field.name]), field.name
        shown += 1
    assert shown >= 40


def test_explicit_argparse_defaults_are_shown_once():
    export = PARSERS["export"]
    text = " ".join(export.format_help().split())
    assert "--input-size INPUT_SIZE square example input (default: 513)" in text
    assert text.count("513") == 1


def test_help_points_to_nothing_the_wheel_lacks():
    for name, parser in PARSERS.items():
        text = parser.format_help()
        assert "docs/" not in text, f"deeplabv1 {name} --help names a repository file"
        assert "configs/" not in text, f"deeplabv1 {name} --help names a repository folder"
    top = PARSERS[""].format_help()
    assert "deeplabv1 COMMAND --help" in top and "--list-configs" in top


@pytest.mark.parametrize("argv, command", [
    (["predict", "--progress", "false", "x.png"], "predict"),
    (["data", "synth", "--out", "s", "--foo", "1"], "data synth"),
    (["crf", "--no-such-flag"], "crf"),
    (["data", "--bogus", "synth", "--out", "s"], "data"),
])  # fmt: skip
def test_an_unknown_flag_names_the_command(argv, command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"deeplabv1 {command}: error: unrecognized arguments: ")
    assert f"usage: deeplabv1 {command} " in err  # the command's usage, not the top level's
