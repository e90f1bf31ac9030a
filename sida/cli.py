"""The `sida` command. It only dispatches: each room owns its subcommand (models/, train/, ...).

Subcommands are imported lazily so `sida --help` stays fast and a missing optional dependency of
one room never breaks the others.
"""

import importlib

import click

from sida import __version__

# name -> (module:attribute of the click command, one-line help)
SUBCOMMANDS = {
    'train': ('train.cli:train', 'Distil a one-step generator (SiD / SiDA / SiD2A) or train a teacher.'),
    'data': ('train.data_cli:data', 'Prepare data sets for the training recipes.'),
    'export': ('export.cli:export', 'Export a bundle to ONNX / TensorRT / Triton behind a parity gate.'),
    'serve': ('serve.cli:serve', 'Serve bundles over HTTP (FastAPI) and Triton.'),
    'ui': ('ui.cli:ui', 'Run the Gradio demo against a server.'),
    'generate': ('models.cli:generate', 'Generate images from a bundle in one step.'),
    'bench': ('bench.cli:bench', 'Benchmark generation, serving and training.'),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        module, attr = SUBCOMMANDS[name][0].split(':')
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        formatter.write_paragraph()
        with formatter.section('Commands'):
            formatter.write_dl([(name, help_) for name, (_, help_) in SUBCOMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={'help_option_names': ['-h', '--help']})
@click.version_option(__version__, prog_name='sida')
def main():
    """sida: turn a pretrained diffusion model into a one-step generator, export it and serve it."""


if __name__ == '__main__':
    main()
