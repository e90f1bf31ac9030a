"""`sida train`: distil (SiD / SiDA / SiD2A), train a teacher, or run the analytic 2-D toy."""

import json
import re
from pathlib import Path

import click

CTX = {'help_option_names': ['-h', '--help'], 'show_default': True}


def parse_count(text):
    """'200k', '2.5M', '1e6', '50000' -> int."""
    m = re.fullmatch(r'\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMgG]?)\s*', str(text))
    if not m:
        raise click.BadParameter(f'{text!r} is not a count like 50000, 200k or 2.5M')
    return int(float(m.group(1)) * {'': 1, 'k': 1e3, 'm': 1e6, 'g': 1e9}[m.group(2).lower()])


class Count(click.ParamType):
    name = 'COUNT'

    def convert(self, value, param, ctx):
        return value if isinstance(value, int) else parse_count(value)


COUNT = Count()


def _fail(message):
    raise click.ClickException(message)


@click.group(context_settings=CTX)
def train():
    """Distil a one-step generator (SiD / SiDA / SiD2A), train a teacher, or run the 2-D toy."""


def run_options(f):
    for option in reversed([
        click.option('--out', 'run_dir', required=True, type=click.Path(file_okay=False, path_type=Path), help='Run directory.'),
        click.option('--images', 'total_images', type=COUNT, default='20M', help='Training length in images seen (k/M suffixes).'),
        click.option('--batch', type=click.IntRange(1), default=256, help='Global batch (all processes).'),
        click.option('--batch-gpu', type=click.IntRange(1), default=None, help='Micro-batch per process (gradient accumulation).'),
        click.option('--precision', type=click.Choice(['auto', 'bf16', 'fp16', 'fp32']), default='auto',
                     help='auto = bf16 on CUDA, fp32 on CPU.'),
        click.option('--tf32/--no-tf32', default=False, help='Allow TF32 matmuls/convolutions (fp32 runs on Ampere+).'),
        click.option('--channels-last', is_flag=True, help='channels_last memory format for the UNets.'),
        click.option('--compile', 'compile_', is_flag=True, help='torch.compile the networks.'),
        click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto'),
        click.option('--seed', type=int, default=0),
        click.option('--data', type=click.Path(exists=True, path_type=Path), default=None,
                     help='Images: folder, zip, tar(.gz), EDM dataset zip or .npz.'),
        click.option('--data-prefix', default='', help='Sub-folder inside --data, e.g. "train".'),
        click.option('--max-data', type=COUNT, default=None, help='Use at most this many images of --data.'),
        click.option('--log-every', type=COUNT, default='10k', help='Images between log lines.'),
        click.option('--sample-every', type=COUNT, default='200k', help='Images between sample grids.'),
        click.option('--checkpoint-every', type=COUNT, default='500k', help='Images between checkpoints.'),
        click.option('--keep', type=click.IntRange(1), default=3, help='Checkpoints to keep (plus the best).'),
        click.option('--resume', default=None, help='"auto" (newest checkpoint in --out) or a checkpoint directory.'),
        click.option('--save-dtype', type=click.Choice(['float32', 'float16', 'bfloat16']), default='float32',
                     help='Weight dtype of the written bundles.'),
        click.option('--export', 'exports', default='', help='After training, export the final bundle: any of '
                     'onnx, onnx-fp16, compile, triton-repo (comma-separated), each behind the parity gate.'),
    ]):
        f = option(f)
    return f


@train.command(context_settings=CTX)
@click.option('--method', type=click.Choice(['sid', 'sida', 'sid2a']), default='sida', help='sid is data-free; sida/sid2a need --data.')
@click.option('--teacher', required=True, type=click.Path(exists=True, path_type=Path),
              help='EDM/SiD network pickle, or a sida bundle / checkpoint directory.')
@click.option('--generator', 'generator_init', type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help='SiD2A: the SiD generator bundle to start from.')
@click.option('--alpha', type=float, default=None, help='SiD alpha [default: 1.2 for sid, 1.0 for sida/sid2a].')
@click.option('--lr', 'lr_g', type=float, default=1e-5, help='Generator learning rate.')
@click.option('--lr-psi', type=float, default=None, help='Fake-score learning rate [default: --lr].')
@click.option('--init-sigma', type=float, default=2.5)
@click.option('--tmax', type=int, default=800)
@click.option('--ema', 'ema_halflife', type=COUNT, default='500k', help='EMA half-life in images.')
@click.option('--g-warmup', type=COUNT, default=None, help='Images before G updates [default: 0 sid, 100k sida].')
@click.option('--gan-start', type=COUNT, default='200k', help='Images before the adversarial term (sida).')
@click.option('--loss-scale-g', type=float, default=100.0)
@click.option('--loss-scale-d', type=float, default=1.0)
@click.option('--loss-scale-g-gan', type=float, default=0.01)
@click.option('--metric-features', default=None,
              help='Quality metric feature network: inception:PATH or classifier:PATH (local TorchScript).')
@click.option('--metric-every', type=COUNT, default='0', help='Images between quality evaluations (0 = off).')
@click.option('--metric-samples', type=COUNT, default='10k', help='Generated images per evaluation.')
@run_options
def distill(**o):
    """Distil a one-step generator from a diffusion teacher."""
    from train.distill_main import main
    main(o)


@train.command(context_settings=CTX)
@click.option('--preset', type=click.Choice(['ddpmpp', 'ncsnpp', 'adm']), default='ddpmpp')
@click.option('--resolution', type=int, default=None, help='Model resolution [default: the data set\'s].')
@click.option('--channels', 'img_channels', type=click.Choice(['1', '3']), default='3')
@click.option('--cond', type=click.Choice(['class', 'none', 'text']), default='class',
              help='class: labels from <class>/ folders or dataset.json; text: captions in dataset.json.')
@click.option('--model-channels', type=int, default=128)
@click.option('--channel-mult', default='2,2,2', help='Per-resolution channel multipliers.')
@click.option('--num-blocks', type=int, default=4)
@click.option('--attn', default='16', help='Resolutions with self-attention.')
@click.option('--dropout', type=float, default=0.13)
@click.option('--lr', type=float, default=1e-3)
@click.option('--lr-rampup', type=COUNT, default='640k', help='Images over which the learning rate ramps up.')
@click.option('--ema', 'ema_halflife', type=COUNT, default='500k', help='EMA half-life in images.')
@click.option('--xflip/--no-xflip', default=True, help='Random horizontal flips.')
@run_options
def teacher(**o):
    """Train an EDM teacher (denoising score matching) on your images."""
    from train.teacher_main import main
    main(o)


@train.command(context_settings=CTX)
@click.option('--method', type=click.Choice(['sid', 'sida']), default='sid')
@click.option('--out', 'out_dir', required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option('--iterations', type=click.IntRange(1), default=3000)
@click.option('--batch', type=click.IntRange(1), default=256)
@click.option('--biased-teacher', is_flag=True, help='Teacher with uniform mode weights, data with the true ones (SiDA check).')
@click.option('--gan-scale', type=float, default=0.3, help='SiDA adversarial loss scale (about 1 to pull a biased teacher to the data).')
@click.option('--seed', type=int, default=0)
def toy(method, out_dir, iterations, batch, biased_teacher, gan_scale, seed):
    """SiD / SiDA on an 8-Gaussian mixture with an exact teacher (CPU, about a minute).

    Writes OUT/metrics.json (sliced Wasserstein before/after, modes covered) and OUT/samples.png.
    """
    from tqdm import tqdm

    from train.toy import ToyConfig, run_toy
    with tqdm(total=iterations, unit='it', desc=f'toy {method}') as bar:
        metrics = run_toy(ToyConfig(method=method, iterations=iterations, batch=batch, biased_teacher=biased_teacher,
                                    loss_scale_g_gan=gan_scale, seed=seed),
                          out_dir, progress=lambda i, n: bar.update(1))
    click.echo(json.dumps({k: v for k, v in metrics.items() if k != 'mode_frequencies'}, indent=2))
    click.echo(f'wrote {out_dir}/metrics.json and {out_dir}/samples.png')


@train.command(context_settings=CTX)
@click.option('--data', required=True, type=click.Path(exists=True, path_type=Path), help='Labelled images (e.g. the CIFAR-10 tarball).')
@click.option('--train-prefix', default='train', help='Sub-folder of the training split.')
@click.option('--test-prefix', default='test', help='Sub-folder of the test split.')
@click.option('--out', 'out_dir', required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option('--epochs', type=click.IntRange(1), default=24)
@click.option('--width', type=click.IntRange(8), default=64)
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto')
def classifier(data, train_prefix, test_prefix, out_dir, epochs, width, device):
    """Train the feature network of the FD-CIFAR metric (a small ResNet; not Inception FID)."""
    import torch

    from train.classifier import train_classifier
    from train.data import ImageDataset
    device = ('cuda' if torch.cuda.is_available() else 'cpu') if device == 'auto' else device
    splits = []
    for prefix in (train_prefix, test_prefix):
        ds = ImageDataset(data, prefix=prefix)
        if ds.labels is None:
            _fail(f'{data}/{prefix}: no labels (need <class>/<file> folders or dataset.json)')
        splits += [ds.load_all(), torch.as_tensor(ds.labels)]
    info = train_classifier(*splits, out_dir=out_dir, epochs=epochs, width=width, device=device, log=click.echo)
    click.echo(json.dumps(info, indent=2))
