"""`sida data`: prepare the data sets the training recipes read."""

from pathlib import Path

import click

from sida.cli_options import CTX


@click.group(context_settings=CTX)
def data():
    """Prepare data sets for the training recipes."""


@data.command(context_settings=CTX)
@click.option('--out', 'out_dir', required=True, type=click.Path(file_okay=False, path_type=Path),
              help='Folder to write cifar10-jpeg.tar.gz into (use it with --data-prefix train or test).')
@click.option('--from', 'source', type=click.Path(exists=True, path_type=Path), default=None,
              help='A local copy instead of the download: the official python tarball, or JPEG files as '
                   'train|test/<class>/<file>.jpg in a folder, zip or tar.')
def cifar10(out_dir, source):
    """CIFAR-10 as JPEG: download the official archive (md5-checked) or convert a local copy."""
    from train.cifar10 import Cifar10Error, prepare_cifar10
    try:
        prepare_cifar10(out_dir, source, log=lambda msg: click.echo(msg, err=True))
    except Cifar10Error as e:
        raise click.ClickException(str(e)) from None
