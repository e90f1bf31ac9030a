"""Placeholders for subcommands whose issue has not landed: they say so in one line and exit 2."""

import click


class _NotBuilt(click.ClickException):
    exit_code = 2


def _make(name, issue):
    @click.command(name=name, context_settings={'ignore_unknown_options': True, 'allow_extra_args': True},
                   help=f'Not built yet (issue [{issue}]).')
    def command():
        raise _NotBuilt(f'`sida {name}` is not built yet (tracked by issue [{issue}])')
    return command


ui = _make('ui', 'ui')
bench = _make('bench', 'bench')
