"""Every `asset-manager ...` command line and `make` target the README shows exists, with its options."""

from __future__ import annotations

import re
import shlex
from typing import Any

import typer

from asset_manager.cli import app
from libs.common.settings import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")


def command_lines() -> list[str]:
    """`asset-manager ...` lines of the README's bash blocks and inline code spans."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        lines += [
            line.split("#")[0].strip()
            for line in block.splitlines()
            if line.strip().startswith("asset-manager")
        ]
    lines += re.findall(r"`(asset-manager [^`]*)`", README)
    return [
        line for line in lines if line and not line.split()[1].isupper()
    ]  # `asset-manager X`: a placeholder


def check(line: str, root: Any) -> None:
    words = shlex.split(line)[1:]
    command = root
    while getattr(command, "commands", None) and words and not words[0].startswith("-"):
        name = words.pop(0)
        assert name in command.commands, f"README: `{line}`: no command {name!r}"
        command = command.commands[name]
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
    for word in words:
        if word.startswith("-") and word not in ("-", "--"):
            assert word.split("=")[0] in known, f"README: `{line}`: {word} is not an option of it"


def test_readme_commands_exist() -> None:
    root = typer.main.get_command(app)  # typer's own (vendored) click: groups have `commands`
    lines = command_lines()
    assert len(lines) > 30
    for line in lines:
        check(line, root)


def test_readme_make_targets_exist() -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    for target in set(re.findall(r"`make ([a-z-]+)`", README)) | set(
        re.findall(r"^make ([a-z-]+)", README, flags=re.M)
    ):
        assert target in targets, f"README names `make {target}`, which the Makefile does not define"
