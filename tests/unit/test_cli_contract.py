"""Every command: --help from its docstring; a bad argument is a one-line error, never a traceback."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from app.cli.main import cli


def commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


ALL = list(commands(cli))


def _readme_commands() -> set[str]:
    """The commands README's CLI summary names: ``fraudlens models list|show|promote`` is three,
    ``fraudlens worker --role …`` and ``fraudlens explain TXID`` one each."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## CLI\n", 1)[1].split("\n## ", 1)[0]
    listed: set[str] = set()
    for usage in re.findall(r"^- `fraudlens ([^`]+)`", section, flags=re.M):
        words: list[str] = []
        for word in usage.split():
            if word.startswith("-") or word[0].isupper():
                break
            words.append(word)
        *path, last = words
        listed |= {" ".join([*path, choice]) for choice in last.split("|")}
    return listed


def test_the_cli_has_the_commands_the_readme_lists() -> None:
    listed = _readme_commands()
    names = {" ".join(path) for path, _ in ALL}
    assert listed <= names, f"README lists commands the CLI lacks: {sorted(listed - names)}"
    missing = {path[0] for path, _ in ALL} - {name.split()[0] for name in listed}
    assert not missing, f"commands README's CLI summary does not name: {sorted(missing)}"
    wanted = {"broker", "worker", "generate", "train", "produce", "up", "models promote", "lag", "explain"}
    wanted |= {"tables get", "tables scan", "tables stats", "relay", "token create"}
    assert wanted <= listed, f"README's CLI summary lacks {sorted(wanted - listed)}"


@pytest.mark.parametrize(("path", "command"), ALL, ids=[" ".join(p) for p, _ in ALL])
def test_help_comes_from_the_docstring(path: tuple[str, ...], command: click.Command) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert command.callback is None or command.callback.__doc__, f"{' '.join(path)} has no docstring"
    first_line = (command.help or "").strip().splitlines()[0]
    assert first_line[:40] in " ".join(result.output.split())


@pytest.mark.parametrize(("path", "command"), ALL, ids=[" ".join(p) for p, _ in ALL])
def test_an_unknown_option_is_a_short_error(path: tuple[str, ...], command: click.Command) -> None:
    result = CliRunner().invoke(cli, [*path, "--no-such-option"])
    assert result.exit_code == 2
    assert "Error: No such option" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["worker", "--role", "painter"],
        ["generate", "--count", "-1"],
        ["produce", "--rate", "0"],
        ["produce", "--bad-fraction", "2"],
        ["train", "--rows", "10"],
        ["lag", "--window", "0"],
        ["explain", "../etc/passwd"],
        ["tables", "scan", "explanations", "--status", "lost"],
        ["tables", "scan", "explanations", "--since", "yesterday"],
        ["tables", "get", "users", "k"],
        ["broker", "--port", "70000"],
    ],
)
def test_bad_arguments_get_a_usage_error(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "Error: " in result.output and "Traceback" not in result.output


FLOAT_OPTIONS = [
    (path, param)
    for path, command in ALL
    for param in command.params
    if isinstance(param.type, click.types.FloatParamType)
]


@pytest.mark.parametrize(
    ("path", "param"), FLOAT_OPTIONS, ids=[f"{' '.join(p)} {q.name}" for p, q in FLOAT_OPTIONS]
)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_no_number_option_takes_nan_or_infinity(
    path: tuple[str, ...], param: click.Parameter, value: str
) -> None:
    """float() reads them and ``nan`` compares false with every range bound; refused before any
    command starts (the conversion alone is checked: an accepted value would start it)."""
    with pytest.raises(click.BadParameter, match=r"not a finite number|not in the range"):
        param.type.convert(value, param, None)


def test_every_command_has_number_options_to_check() -> None:
    names = {(" ".join(path), param.name) for path, param in FLOAT_OPTIONS}
    assert {("broker", "fetch_coalesce_ms"), ("produce", "rate"), ("lag", "window")} <= names, names
