"""Every code block of the README runs as written: Python blocks are executed, and every ``stripe`` command line
in a shell block is a valid command (parsed by the real parser; running them all would train for days)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from stripe.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def _commands() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()  # a comment after the command
            if line.startswith("stripe "):
                lines.append(line)
    return lines


def test_the_readme_has_python_and_shell_blocks():
    assert len(_blocks("python")) >= 2 and len(_commands()) >= 8


@pytest.mark.parametrize("command", _commands())
def test_every_stripe_command_in_the_readme_parses(command):
    args = build_parser().parse_args(shlex.split(command)[1:])  # argparse exits (SystemExit) on a bad line
    assert args.command == shlex.split(command)[1]


@pytest.mark.real_data
@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_every_python_block_in_the_readme_runs(index, tmp_path, monkeypatch, capsys):
    from helpers import real_dataset_name

    code = _blocks("python")[index]
    if "cifar10" in code and real_dataset_name() != "cifar10":
        pytest.skip("the block reads CIFAR-10, which is not here")
    monkeypatch.chdir(tmp_path)  # the blocks write their files where they run
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip()  # each block prints what it shows
