"""The whole `sida` command tree: every command answers --help, every command and option says what it is,
and the README's command table is `sida --help`'s."""

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from sida.cli import SUBCOMMANDS, main

README = Path(__file__).resolve().parents[1] / 'README.md'


def walk(command, path):
    """(path, command) for a command and everything under it."""
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command, info_name=path[-1])
        for name in command.list_commands(ctx):
            yield from walk(command.get_command(ctx, name), (*path, name))


@pytest.mark.parametrize('name', list(SUBCOMMANDS))
def test_every_command_has_help_and_every_option_says_what_it_is(name):
    ctx = click.Context(main, info_name='sida')
    for path, command in walk(main.get_command(ctx, name), ('sida', name)):
        result = CliRunner().invoke(main, [*path[1:], '--help'])
        assert result.exit_code == 0, f'{" ".join(path)} --help: {result.output}'
        assert (command.help or command.short_help or '').strip(), f'{" ".join(path)} has no help'
        bare = [p.opts[0] for p in command.params if isinstance(p, click.Option) and not (p.help or '').strip()]
        assert bare == [], f'{" ".join(path)}: options without help: {bare}'
        typed = [p.opts[0] for p in command.params if isinstance(p, click.Option) and '[default' in (p.help or '')]
        assert typed == [], f'{" ".join(path)}: defaults typed into the help of {typed} (let click show them)'


def test_readme_command_table_is_sida_help():
    rows = re.findall(r'^\| `sida (\S+)` \| (.+?) \|$', README.read_text(), flags=re.M)
    assert rows == [(name, help_) for name, (_, help_) in SUBCOMMANDS.items()]
    listed = CliRunner().invoke(main, ['--help']).output.split('Commands:')[1]
    names = [line.split()[0] for line in listed.splitlines() if line.startswith('  ') and not line.startswith('   ')]
    assert names == list(SUBCOMMANDS)
