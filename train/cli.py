"""`sida train`: distil (SiD / SiDA / SiD2A), train a teacher, or run the analytic 2-D toy."""

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import click

from sida.cli_options import COMPILE_MODES, CTX, DTYPES, device_option, resolve_device


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


def parse_duration(text):
    """'90s', '45m', '2h', '3600' (seconds) -> seconds."""
    m = re.fullmatch(r'\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*', str(text))
    if not m:
        raise click.BadParameter(f'{text!r} is not a duration like 3600, 90s, 45m or 2h')
    return float(m.group(1)) * {'': 1, 's': 1, 'm': 60, 'h': 3600}[m.group(2)]


class Duration(click.ParamType):
    name = 'DURATION'

    def convert(self, value, param, ctx):
        return value if isinstance(value, (int, float)) else parse_duration(value)


def _fail(message):
    raise click.ClickException(message)


@click.group(context_settings=CTX)
def train():
    """Distil a one-step generator (SiD / SiDA / SiD2A; SiD-LSG for SD teachers), train a teacher, or run the 2-D toy."""


_COMMON_RUN_OPTIONS = [
    click.option('--out', 'run_dir', required=True, type=click.Path(file_okay=False, path_type=Path),
                 help='Run folder: config.json, logs, sample grids, checkpoints and the final bundle.'),
    click.option('--images', 'total_images', type=COUNT, default='20M', help='Training length in images seen (k/M suffixes).'),
    click.option('--time-limit', type=Duration(), default='0',
                 help='Also stop after this much training-loop time (90s, 45m, 2h; 0 = none; set-up not counted, restarts '
                      'on --resume): checkpoint and bundle as at the end.'),
    click.option('--batch', type=click.IntRange(1), default=256, help='Global batch (all processes).'),
    click.option('--batch-gpu', type=click.IntRange(1), default=None, show_default='the whole per-process batch',
                 help='Micro-batch per process (gradient accumulation).'),
    click.option('--precision', type=click.Choice(['auto', 'bf16', 'fp16', 'fp32']), default='auto',
                 help='auto = bf16 on CUDA, fp32 on CPU.'),
    click.option('--tf32/--no-tf32', default=False, help='Allow TF32 matmuls/convolutions (fp32 runs on Ampere+).'),
    click.option('--channels-last', is_flag=True, help='channels_last memory format for the UNets.'),
    click.option('--compile', 'compile_', type=click.Choice(COMPILE_MODES), is_flag=False, flag_value='default', default=None,
                 help='torch.compile the networks; a bare --compile is mode "default". "reduce-overhead" adds CUDA graphs '
                      '(fastest measured: ~600 img/s SiD, DDPM++ CIFAR-10, batch 128, H200); the first iterations compile (minutes).'),
    device_option(),
    click.option('--seed', type=int, default=0, help='Seed of every random draw (noise, data order, initialisation).'),
    click.option('--log-every', type=COUNT, default='10k', help='Images between log lines.'),
    click.option('--sample-every', type=COUNT, default='200k', help='Images between sample grids.'),
    click.option('--checkpoint-every', type=COUNT, default='500k', help='Images between checkpoints.'),
    click.option('--keep', type=click.IntRange(1), default=3, help='Checkpoints to keep (plus the best).'),
    click.option('--resume', default=None, help='"auto" (newest checkpoint in --out) or a checkpoint folder.'),
    click.option('--save-dtype', type=click.Choice(DTYPES), default='fp32', help='Weight dtype of the written bundles.'),
    click.option('--export', 'exports', default='', help='After training, export the final bundle: any of '
                 'onnx, onnx-fp16, compile, triton-repo (comma-separated), each behind the parity gate.'),
    click.option('--dry-run', is_flag=True, help='Print the resolved configuration as JSON and exit (loads no data or teacher).'),
]
_DATA_OPTIONS = [
    click.option('--data', type=click.Path(exists=True, path_type=Path), default=None,
                 help='Images: folder, zip, tar(.gz), EDM dataset zip or .npz.'),
    click.option('--data-prefix', default='', help='Sub-folder inside --data, e.g. "train".'),
    click.option('--max-data', type=COUNT, default=None, help='Use at most this many images of --data.'),
    click.option('--captions', type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                 help='Captions for --data (text models): a file from `sida train captions`.'),
    click.option('--text-embeddings', type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                 help='Precomputed prompt embeddings (from `sida train captions`), for machines without the text encoder.'),
]


def _apply(options, f):
    for option in reversed(options):
        f = option(f)
    return f


def run_options(f):
    """Run directory, length, precision, logging, checkpoints and data options of every training command."""
    return _apply(_COMMON_RUN_OPTIONS[:11] + _DATA_OPTIONS + _COMMON_RUN_OPTIONS[11:], f)


def data_free_run_options(f):
    return _apply(_COMMON_RUN_OPTIONS, f)


@train.command(context_settings=CTX)
@click.option('--method', type=click.Choice(['sid', 'sida', 'sid2a']), default='sida', help='sid is data-free; sida/sid2a need --data.')
@click.option('--teacher', required=True, type=click.Path(exists=True, path_type=Path),
              help='EDM/SiD network pickle, or a sida bundle / checkpoint directory.')
@click.option('--generator', 'generator_init', type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help='A one-step generator bundle to start the generator from: SiD2A\'s SiD generator, or a student to '
                   'continue (a warm restart: the fake score starts again from the teacher, so keep a --g-warmup for it '
                   'to learn the generator\'s images first; the new card counts the images of both runs).')
@click.option('--alpha', type=float, default=None, show_default='1.2 for sid, 1.0 for sida/sid2a', help='SiD alpha.')
@click.option('--lr', 'lr_g', type=float, default=1e-5, help='Generator learning rate.')
@click.option('--lr-psi', type=float, default=None, show_default='--lr', help='Fake-score learning rate.')
@click.option('--g-beta1', type=click.FloatRange(0, 1, max_open=True), default=0.0,
              help="The generator's Adam beta1 (the fake score's stays 0); the reference's FFHQ-64 SiD run uses 0.9.")
@click.option('--augment', type=click.FloatRange(0, 1), default=None,
              show_default='0.12 if the teacher takes augment labels (EDM CIFAR-10/FFHQ/AFHQ networks), else 0',
              help="Probability of each non-leaking augmentation of the images the fake score learns on, told to it "
                   "through its augment labels; the reference uses 0.12 for CIFAR-10, 0.15 for FFHQ/AFHQ, 0 = off.")
@click.option('--guidance', type=click.FloatRange(1), default=1.0,
              help="Classifier-free guidance of the teacher in the generator loss (SiD-LSG's long guidance; 1 = off). "
                   "Needs a teacher trained with --label-dropout.")
@click.option('--init-sigma', type=float, default=2.5, help="The generator's fixed input noise level.")
@click.option('--tmax', type=click.IntRange(1, 1000), default=800, help='Generator-loss times t ~ U[0, tmax/1000].')
@click.option('--ema', 'ema_halflife', type=COUNT, default='500k', help='EMA half-life in images.')
@click.option('--g-warmup', type=COUNT, default=None, show_default='0 for sid, 100k for sida/sid2a',
              help='Images before the generator is first updated (the fake score warms up).')
@click.option('--gan-start', type=COUNT, default='200k', help='Images before the adversarial term joins (sida/sid2a).')
@click.option('--loss-scale-g', type=float, default=100.0, help='Scale of the SiD generator loss.')
@click.option('--loss-scale-d', type=float, default=1.0, help='Scale of the discriminator loss (sida/sid2a).')
@click.option('--loss-scale-g-gan', type=float, default=0.01, help="Scale of the generator's adversarial loss (sida/sid2a).")
@click.option('--metric-features', default=None,
              help='Quality metric feature network: inception:PATH or classifier:PATH (local TorchScript); inception alone: the [fid] '
                   'extra\'s TF-FID weights.')
@click.option('--metric-every', type=COUNT, default='0', help='Images between quality evaluations (0 = off).')
@click.option('--metric-samples', type=COUNT, default='10k', help='Generated images per evaluation.')
@run_options
def distill(**o):
    """Distil a one-step generator from a diffusion teacher."""
    from train.distill_main import main
    main(o)


@train.command(context_settings={**CTX, 'default_map': {'batch': 512, 'total_images': '10M'}})   # the reference's
@click.option('--teacher', required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help='Stable-Diffusion-style teacher in diffusers layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/).')
@click.option('--prompts', required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='Training prompts: a text file (one per line) or a JSON list of strings. Data-free: no images.')
@click.option('--guidance', type=float, default=2.0, help='LSG guidance scale kappa, used at all four places.')
@click.option('--guidance-fake-train', type=float, default=None, show_default='--guidance', help='kappa_1 (fake-score training).')
@click.option('--guidance-fake-eval', type=float, default=None, show_default='--guidance',
              help='kappa_2/3 (fake score in the G loss).')
@click.option('--guidance-real-eval', type=float, default=None, show_default='--guidance', help='kappa_4 (teacher in the G loss).')
@click.option('--t-init', type=click.IntRange(0, 999), default=625, help='The generator\'s fixed DDPM step.')
@click.option('--tmin', type=click.IntRange(0, 999), default=20, help='Loss times t ~ U{tmin, ..., tmax-1}.')
@click.option('--tmax', type=click.IntRange(1, 1000), default=980, help='Upper end (exclusive) of the loss times.')
@click.option('--alpha', type=float, default=1.0, help='SiD alpha.')
@click.option('--lr', 'lr_g', type=float, default=1e-6, help='Generator learning rate.')
@click.option('--lr-psi', type=float, default=None, show_default='--lr', help='Fake-score learning rate.')
@click.option('--ema', 'ema_halflife', type=COUNT, default='50k', help='EMA half-life in images.')
@click.option('--empty-prompts', type=click.FloatRange(0, 1), default=0.1,
              help='Share of "" prompts in the fake-score update (when its guidance is not 1).')
@click.option('--grad-checkpointing', is_flag=True, help='Gradient checkpointing in the generator and fake-score UNets.')
@click.option('--teacher-dtype', type=click.Choice(DTYPES), default='fp32',
              help='Store the frozen teacher in this dtype (halves its memory; autocast runs it in bf16 anyway).')
@click.option('--offload-teacher', is_flag=True,
              help='Keep the frozen teacher in host memory except during the generator step (CUDA; two copies per iteration).')
@data_free_run_options
def lsg(**o):
    """SiD-LSG: distil a Stable-Diffusion-style latent teacher into a one-step text-to-image generator (data-free)."""
    from train.lsg_main import main
    main(o)


@train.command(context_settings=CTX)
@click.option('--preset', type=click.Choice(['ddpmpp', 'ncsnpp', 'adm']), default='ddpmpp', help='EDM network architecture.')
@click.option('--resolution', type=click.IntRange(4), default=None, show_default="the data set's", help='Model resolution.')
@click.option('--channels', 'img_channels', type=click.Choice(['1', '3']), default='3', help='Image channels (1 = greyscale).')
@click.option('--cond', type=click.Choice(['class', 'none', 'text']), default='class',
              help='class: labels from <class>/ folders or dataset.json; text: captions from --captions or dataset.json.')
@click.option('--model-channels', type=click.IntRange(1), default=128, help='Base channel count of the UNet.')
@click.option('--channel-mult', default='2,2,2', help='Per-resolution channel multipliers.')
@click.option('--num-blocks', type=click.IntRange(1), default=4, help='Residual blocks per resolution.')
@click.option('--attn', default='16', help='Resolutions with self-attention (comma-separated; "" for none).')
@click.option('--dropout', type=click.FloatRange(0, 1), default=0.13, help='Dropout probability in the residual blocks.')
@click.option('--label-dropout', type=click.FloatRange(0, 1), default=None,
              show_default='the --init-from bundle\'s (the resumed run\'s on --resume), else 0',
              help='Probability of training on an image with its condition (class or caption) zeroed: what lets the '
                   'teacher be guided later (`sida train distill --guidance`), e.g. 0.1. A warm restart (--init-from) '
                   'keeps its bundle\'s unless given.')
@click.option('--lr', type=float, default=1e-3, help='Learning rate (Adam).')
@click.option('--lr-rampup', type=COUNT, default='640k', help='Images over which the learning rate ramps up.')
@click.option('--ema', 'ema_halflife', type=COUNT, default='500k', help='EMA half-life in images.')
@click.option('--xflip/--no-xflip', default=True, help='Random horizontal flips.')
@click.option('--max-tokens', type=click.IntRange(1), default=None, show_default="the --text-embeddings table's, else 32",
              help='Text models: token rows per prompt.')
@click.option('--init-from', type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help='Continue a teacher bundle (warm restart): its EMA weights start both the network and its EMA, the '
                   'optimiser starts fresh with the learning rate ramped up again over --lr-rampup, and the images it had '
                   'seen are counted on (provenance images_total). Give the architecture options it was trained with.')
@run_options
def teacher(**o):
    """Train an EDM teacher (denoising score matching) on your images, or continue one (--init-from)."""
    from train.teacher_main import main
    main(o)


@train.command(context_settings=CTX)
@click.option('--method', type=click.Choice(['sid', 'sida']), default='sid', help='sid follows the teacher; sida adds real samples.')
@click.option('--out', 'out_dir', required=True, type=click.Path(file_okay=False, path_type=Path),
              help='Run folder: metrics.json and samples.png.')
@click.option('--iterations', type=click.IntRange(1), default=1000, show_default=True, help='Training iterations.')
@click.option('--batch', type=click.IntRange(1), default=256, help='Samples per iteration.')
@click.option('--biased-teacher', is_flag=True, help='Teacher with uniform mode weights, data with the true ones (SiDA check).')
@click.option('--gan-scale', type=float, default=0.3, help='SiDA adversarial loss scale (about 1 to pull a biased teacher to the data).')
@click.option('--seed', type=int, default=0, help='Seed of every random draw.')
@click.option('--dry-run', is_flag=True, help='Print the resolved configuration as JSON and exit.')
def toy(method, out_dir, iterations, batch, biased_teacher, gan_scale, seed, dry_run):
    """SiD / SiDA on an 8-Gaussian mixture with an exact teacher (CPU, about ten seconds).

    Writes OUT/metrics.json (sliced Wasserstein before/after, modes covered) and OUT/samples.png.
    """
    from tqdm import tqdm

    from train.toy import ToyConfig, run_toy
    cfg = ToyConfig(method=method, iterations=iterations, batch=batch, biased_teacher=biased_teacher, loss_scale_g_gan=gan_scale,
                    seed=seed)
    if dry_run:
        click.echo(json.dumps({'command': 'toy', 'toy': dataclasses.asdict(cfg), 'out': str(out_dir)}, indent=2, default=str))
        return
    with tqdm(total=iterations, unit='it', desc=f'toy {method}') as bar:
        metrics = run_toy(cfg, out_dir, progress=lambda i, n: bar.update(1))
    click.echo(json.dumps({k: v for k, v in metrics.items() if k != 'mode_frequencies'}, indent=2))
    click.echo(f'wrote {out_dir}/metrics.json and {out_dir}/samples.png')


@train.command(context_settings=CTX)
@click.option('--data', required=True, type=click.Path(exists=True, path_type=Path), help='Labelled images (e.g. the CIFAR-10 tarball).')
@click.option('--train-prefix', default='train', help='Sub-folder of the training split.')
@click.option('--test-prefix', default='test', help='Sub-folder of the test split.')
@click.option('--out', 'out_dir', required=True, type=click.Path(file_okay=False, path_type=Path),
              help='Folder for classifier.pt and its training record.')
@click.option('--epochs', type=click.IntRange(1), default=24, help='Passes over the training split.')
@click.option('--width', type=click.IntRange(8), default=64, help='Channels of the first ResNet stage.')
@device_option()
def classifier(data, train_prefix, test_prefix, out_dir, epochs, width, device):
    """Train the feature network of the FD-CIFAR metric (a small ResNet; not Inception FID)."""
    import torch

    from train.classifier import train_classifier
    from train.data import ImageDataset
    device = resolve_device(device)
    splits = []
    for prefix in (train_prefix, test_prefix):
        ds = ImageDataset(data, prefix=prefix)
        if ds.labels is None:
            _fail(f'{data}/{prefix}: no labels (need <class>/<file> folders or dataset.json)')
        splits += [ds.load_all(), torch.as_tensor(ds.labels)]
    info = train_classifier(*splits, out_dir=out_dir, epochs=epochs, width=width, device=device, log=click.echo)
    click.echo(json.dumps(info, indent=2))


@train.command(context_settings=CTX)
@click.option('--data', required=True, type=click.Path(exists=True, path_type=Path), help='Labelled images.')
@click.option('--data-prefix', default='', help='Sub-folder inside --data, e.g. "train".')
@click.option('--out', 'out_dir', required=True, type=click.Path(file_okay=False, path_type=Path),
              help='Folder for captions.json and text-embeddings.safetensors.')
@click.option('--embed/--no-embed', default=True, help='Also write text-embeddings.safetensors (needs the [text] extra).')
@click.option('--max-tokens', type=click.IntRange(1), default=32, help='Token rows per embedding (the model\'s max_tokens).')
@click.option('--extra-prompt', 'extra_prompts', multiple=True, help='More prompts to put in the embedding table.')
def captions(data, data_prefix, out_dir, embed, max_tokens, extra_prompts):
    """Caption labelled images from their pixels ("a bright photo of a red automobile").

    Writes OUT/captions.json (for --captions) and OUT/text-embeddings.safetensors: every distinct caption and
    the demo prompts encoded once, for training on machines without sentence-transformers (--text-embeddings).
    """
    from train.captions import DEMO_PROMPTS, caption_dataset, write_captions
    from train.data import DataError, ImageDataset
    try:
        pairs = caption_dataset(ImageDataset(data, prefix=data_prefix))
    except (DataError, ValueError) as e:
        _fail(str(e))
    write_captions(out_dir / 'captions.json', pairs, data)
    distinct = {c for _, c in pairs}
    click.echo(f'wrote {out_dir / "captions.json"}: {len(pairs):,} captions, {len(distinct):,} distinct')
    if embed:
        from models.text_encoder import DEFAULT_ENCODER, get_text_encoder, save_precomputed
        try:
            encoder = get_text_encoder(DEFAULT_ENCODER, max_tokens)
        except (RuntimeError, ImportError) as e:
            _fail(f'cannot embed the captions: {e} (or pass --no-embed)')
        from export.parity import PROMPTS as PARITY_PROMPTS  # so train-then-export's parity gate finds its prompts too
        prompts = distinct | set(DEMO_PROMPTS) | set(PARITY_PROMPTS) | set(extra_prompts)
        n = save_precomputed(out_dir / 'text-embeddings.safetensors', prompts, encoder)
        click.echo(f'wrote {out_dir / "text-embeddings.safetensors"}: {n} prompts')


def _named_paths(items, option):
    out = {}
    for item in items:
        name, sep, path = item.partition('=')
        if not sep or not name or not Path(path).exists():
            raise click.BadParameter(f'{item!r}: expected NAME=PATH with an existing PATH', param_hint=option)
        if name in out:
            raise click.BadParameter(f'the name {name!r} is given twice', param_hint=option)
        out[name] = Path(path)
    return out


@train.command(context_settings=CTX)
@click.option('--data', required=True, type=click.Path(exists=True, path_type=Path), help='The training images (the reference).')
@click.option('--data-prefix', default='train', help='Sub-folder of the training split inside --data.')
@click.option('--test-prefix', default='test', help='Held-out split whose distance is the floor ("" to skip).')
@click.option('--classifier', 'classifier_path', required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='classifier.pt from `sida train classifier` (the FD-CIFAR feature space).')
@click.option('--teacher', 'teachers', multiple=True, help='NAME=BUNDLE of a teacher, sampled with EDM Heun (repeatable).')
@click.option('--teacher-steps', default='18,9', help='Heun steps per teacher evaluation (18 steps = 35 NFE).')
@click.option('--student', 'students', multiple=True, help='NAME=BUNDLE of a one-step generator (repeatable).')
@click.option('--captions', type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help='Captions of --data (text models are asked for the captions of random training images).')
@click.option('--text-embeddings', type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help='Precomputed prompt embeddings (from `sida train captions`) instead of loading the text encoder.')
@click.option('--samples', type=COUNT, default='10k', help='Images per model.')
@click.option('--batch', type=click.IntRange(1), default=500, help='Images per generator call.')
@device_option()
@click.option('--out', 'out_dir', required=True, type=click.Path(file_okay=False, path_type=Path),
              help='Folder for eval.json (and curves.png with --curves, stats-cache/).')
@click.option('--fid/--no-fid', default=True,
              help='Also Inception FID (TF-FID weights from the [fid] extra, or --fid-weights) against the training split.')
@click.option('--fid-weights', type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help='A local Inception TorchScript for FID instead of the [fid] extra\'s, e.g. a rounded copy from '
                   '`sida bench fid-weights` (upcast, or for int8 dequantized, to fp32).')
@click.option('--stats-cache', type=click.Path(file_okay=False, path_type=Path), default=None, show_default='OUT/stats-cache',
              help='Where reference statistics are cached, keyed by the data file\'s hash and the feature network '
                   '(share it between evaluations of the same data).')
@click.option('--class-dependence-seeds', type=click.IntRange(0), default=100,
              help='Class models: this many seeds generated under every class, to measure how much the class rather than '
                   'the seed decides the image (class_share, seed_lock; 0 skips it).')
@click.option('--record/--no-record', default=False, help='Also write the numbers into each bundle\'s provenance.metrics '
              '(students: their own, and their teacher\'s where their card names its weights and it ran at 35 NFE; '
              'teachers: theirs at each NFE, which later teacher-progress plots read).')
@click.option('--curves', multiple=True, help='LABEL=RUN_DIR: plot FD vs images seen from its log.jsonl (repeatable).')
def evaluate(data, data_prefix, test_prefix, classifier_path, teachers, teacher_steps, students, captions, text_embeddings,
             samples, batch, device, out_dir, fid, fid_weights, stats_cache, class_dependence_seeds, record, curves):
    """FD-CIFAR, Inception FID, precision/recall, class accuracy and time per image of teachers and students, side by side."""
    import torch

    from models.bundle import BundleError, load_bundle
    from models.text_encoder import bundle_text_encoder, use_precomputed
    from train.data import DataError, ImageDataset
    from train.evaluate import (
        RECORDED,
        plot_curves,
        plot_teacher_progress,
        record_in_bundle,
        student_fn,
        teacher_fn,
        teacher_progress,
    )
    from train.evaluate import evaluate as run_eval
    named = {'teacher': _named_paths(teachers, '--teacher'), 'student': _named_paths(students, '--student')}
    curve_runs = _named_paths(curves, '--curves')
    device = resolve_device(device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        steps = [int(s) for s in teacher_steps.split(',') if s.strip()]
        if not steps or min(steps) < 1:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f'{teacher_steps!r}: give Heun step counts >= 1, like 18,9', param_hint='--teacher-steps') from None
    if fid and fid_weights is None:
        from train.metrics import FIDUnavailable, inception_weights
        try:
            inception_weights()
        except FIDUnavailable as e:
            _fail(f'{e}; or pass --no-fid to skip FID')
    try:
        use_precomputed(text_embeddings)
    except Exception as e:                      # safetensors raises its own error type for a file that is not one
        raise click.BadParameter(str(e), param_hint='--text-embeddings') from None
    try:
        dataset = ImageDataset(data, prefix=data_prefix, captions=captions)
        test = ImageDataset(data, prefix=test_prefix) if test_prefix else None
    except (DataError, ValueError) as e:
        _fail(str(e))
    models, bundles, teacher_bundles = [], {}, {}
    for role, items in named.items():
        for name, path in items.items():
            try:
                bundle = load_bundle(path, device=device)
            except BundleError as e:
                _fail(str(e))
            c = bundle.config.condition
            if c['kind'] == 'text' and dataset.captions is None:
                _fail(f'{name} is a text model: give --captions for {data}')
            if c['kind'] == 'class' and list(c['labels']) != list(dataset.class_names):
                _fail(f'{name}: its classes {c["labels"]} are not the data set\'s {dataset.class_names} (same names, same order)')
            try:
                encoder = bundle_text_encoder(bundle.config) if c['kind'] == 'text' else None
            except (RuntimeError, ImportError) as e:
                _fail(f'{name}: {e}')
            bundle.generator.eval()
            if role == 'teacher':
                teacher_bundles[name] = (path, bundle)
                for s in steps:
                    fn = teacher_fn(bundle.generator.denoiser, s)
                    models.append((f'{name} (Heun, {2 * s - 1} NFE)', 'teacher', fn, c['kind'], encoder))
            else:
                bundles[name] = (path, bundle)
                models.append((f'{name} (1 step)', 'student', student_fn(bundle.generator), c['kind'], encoder))
    # What the numbers are measured with, read now: a file moved during a long evaluation must not lose its result.
    measured_with = {'classifier_sha256': hashlib.sha256(classifier_path.read_bytes()).hexdigest()}
    from train.metrics import NotTorchScript
    try:
        result = run_eval(dataset, test, classifier_path, models, n=samples, device=device, batch=batch, autocast=device == 'cuda',
                          log=click.echo, cache_dir=stats_cache or out_dir / 'stats-cache', fid=fid, fid_weights=fid_weights,
                          dependence_seeds=class_dependence_seeds)
    except NotTorchScript as e:         # a --fid-weights (or --classifier) file that is not TorchScript
        _fail(str(e))
    result['date'] = __import__('datetime').date.today().isoformat()
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / 'eval.json'
    if curves:
        png = out_dir / 'curves.png'
        plot_curves(curve_runs, png)
        result['curves'] = str(png)
    rows = {r['name']: r for r in result['rows']}
    nfe = 2 * max(steps) - 1
    # An older record counts in a progress plot only if it was measured with the same networks.
    measured_with.update({'fid_weights': result['fid']['weights']} if result.get('fid') else {})
    progress = teacher_progress(teacher_bundles, rows, nfe, measured_with)
    if progress:
        result['teacher_progress'] = progress
        plot_teacher_progress(progress, out_dir / 'teachers.png', nfe)
    out_path.write_text(json.dumps(result, indent=2) + '\n')
    click.echo(f'wrote {out_path}')
    if record:
        for name, (path, bundle) in teacher_bundles.items():     # before the students': one bundle may be both
            provenance = bundle.config.provenance
            total = provenance.get('images_total', provenance.get('images_seen'))
            metrics = {**measured_with, **({'images_total': total} if total is not None else {})}
            for s in steps:
                row = rows[f'{name} (Heun, {2 * s - 1} NFE)']
                metrics.update({f'{k}_nfe{2 * s - 1}': round(row[m], 4) for m, k in RECORDED if m in row})
            record_in_bundle(path, metrics)
            click.echo(f'recorded teacher metrics in {path}/sida.json')
        floor = rows.get('test split', {})
        # A teacher's numbers go into a student's card only when it is that student's own teacher (same weights), run
        # at 35 NFE: another teacher's would read as the one it was distilled from.
        teacher_names = {sha: name for name, (_, tb) in teacher_bundles.items()
                         if (sha := tb.config.sha256.get('generator.safetensors'))}
        for name, (path, bundle) in bundles.items():
            row = rows[f'{name} (1 step)']
            own = teacher_names.get(bundle.config.provenance.get('teacher_weights_sha256'))
            own_teacher = rows.get(f'{own} (Heun, 35 NFE)', {}) if own else {}
            if own and not own_teacher:
                click.echo(f'{name}: its teacher {own} did not run at 35 NFE (--teacher-steps 18), so no teacher '
                           'numbers go into its card')
            elif teacher_bundles and not own:
                click.echo(f'{name}: its own teacher is not among --teacher (or its card does not name the teacher\'s '
                           'weights), so no teacher numbers go into its card')
            provenance = bundle.config.provenance
            metrics = {'fd_cifar': round(row['fd'], 4), 'images_seen': provenance.get('images_seen'),
                       'feature_space': 'FD-CIFAR (not Inception FID)', 'eval_samples': row['images'], **measured_with}
            if 'images_total' in provenance:            # a continued student: its images over all its runs
                metrics['images_total'] = provenance['images_total']
            for key in ('class_accuracy', 'class_share', 'seed_lock'):
                if key in row:
                    metrics[key] = round(row[key], 4)
            for metric, key in RECORDED:
                if metric not in row:
                    continue
                metrics[key] = round(row[metric], 4)
                if metric in own_teacher:
                    metrics[f'{key}_teacher_nfe35'] = round(own_teacher[metric], 4)
                if metric in floor:
                    metrics[f'{key}_test_split'] = round(floor[metric], 4)
            if 'fid' in row:
                metrics['fid_reference_images'] = result['fid']['reference_images']
            record_in_bundle(path, metrics, drop=('_teacher_nfe',))
            click.echo(f'recorded metrics in {path}/sida.json')
