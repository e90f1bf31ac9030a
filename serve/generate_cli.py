"""`sida generate`: images from a bundle in one network evaluation each, through the server's backends.

The backend, its names, the class and prompt checks and the PNG metadata keys are the server's
(serve/runtimes.py, serve/backends.py, serve/conditions.py), so an image made here is the image the API gives.
"""

from pathlib import Path

import click

from serve.runtimes import BACKEND_HELP, backend_callback
from sida.cli_options import CTX, device_option


@click.command(context_settings=CTX)
@click.option('--bundle', 'bundle_dir', required=True, type=click.Path(file_okay=False, path_type=Path),
              help='Bundle directory (sida.json + generator.safetensors).')
@click.option('--seeds', default='0-15', help='Seeds: numbers and inclusive ranges, e.g. 0-63 or 1,5,9.')
@click.option('--class', 'class_name', default=None, help='Class name or index (class models); default: a class drawn per seed.')
@click.option('--prompt', default=None, help='Text prompt (text models).')
@click.option('--grid', type=click.Path(dir_okay=False, path_type=Path), default=None, help='Write one grid of all images to this PNG.')
@click.option('--out', type=click.Path(file_okay=False, path_type=Path), default=None,
              help='Write one PNG per seed into this folder (seedNNNNNN.png).')
@click.option('--columns', default=None, type=click.IntRange(min=1), show_default='as square as possible', help='Grid columns.')
@click.option('--batch', default=64, type=click.IntRange(min=1), help='Images per backend call.')
@click.option('--backend', default='torch', callback=backend_callback, help=BACKEND_HELP)
@click.option('--triton-url', default=None, help='Triton server for --backend triton, e.g. http://127.0.0.1:8000.')
@device_option()
def generate(bundle_dir, seeds, class_name, prompt, grid, out, columns, batch, backend, triton_url, device):
    """Generate images from a bundle: one seed, one image, one network evaluation.

    \b
    sida generate --bundle models/zoo/cifar10-cond --seeds 0-63 --class cat --grid cats.png
    sida generate --bundle models/zoo/cifar10-text --prompt "a red car" --seeds 0-7 --out cars/
    """
    import logging

    import numpy as np
    from tqdm import tqdm

    from models.bundle import BundleError, load_bundle, require_one_step
    from models.images import make_grid, save_png
    from models.seeds import parse_seeds
    from serve.backends import BackendUnavailable, make_backend
    from serve.conditions import ConditionError, check_condition, image_metadata, resolve_class, seeded_inputs
    from sida.cli_options import resolve_device

    if (grid is None) == (out is None):
        raise click.UsageError('give exactly one of --grid FILE.png (one grid) or --out DIR (one PNG per seed)')
    if grid is not None and grid.suffix.lower() != '.png':
        raise click.BadParameter(f'{grid}: the grid is a PNG (it carries the seeds and condition); name it .png',
                                 param_hint='--grid')
    try:
        seed_list = parse_seeds(seeds)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint='--seeds') from None
    device = resolve_device(device)
    logging.basicConfig(level=logging.INFO, format='%(message)s')     # the compile backend says where its code came from
    try:
        bundle = load_bundle(bundle_dir)
        require_one_step(bundle.config, bundle_dir)
    except BundleError as e:
        raise click.ClickException(str(e)) from None
    config = bundle.config
    kind = config.condition['kind']
    try:
        check_condition(kind, config.name, class_name is not None, prompt)
        fixed_class = None
        if class_name is not None:
            index = int(class_name) if class_name.strip().isdigit() else None
            fixed_class = resolve_class(config, config.name, class_label=index, class_name=None if index is not None else class_name)
    except ConditionError as e:
        raise click.BadParameter(str(e), param_hint='--prompt' if e.param == 'prompt' else '--class') from None
    try:
        runner = make_backend(backend, bundle, triton_url, device, max_batch=batch)
    except BackendUnavailable as e:
        raise click.ClickException(str(e)) from None

    text_embedding = None
    if kind == 'text':
        from models.text_encoder import bundle_text_encoder
        text_embedding = bundle_text_encoder(config).encode([prompt])[0]
    images, metadata = [], []
    with tqdm(total=len(seed_list), unit='img', desc='generate', disable=None) as bar:
        for start in range(0, len(seed_list), batch):
            chunk = seed_list[start:start + batch]
            inputs, names = seeded_inputs(config, chunk, fixed_class, text_embedding)
            metadata += [image_metadata(config.name, s, class_name=name, prompt=prompt if kind == 'text' else None)
                         for s, name in zip(chunk, names)]
            images.append(np.asarray(runner.generate(inputs)))
            bar.update(len(chunk))
    if runner.name == 'compile':
        runner.cache.finish()          # logs how many graphs came from the compile cache
    images = np.concatenate(images)

    if grid is not None:
        grid.parent.mkdir(parents=True, exist_ok=True)
        condition = ({'class_name': config.label_names[fixed_class]} if fixed_class is not None else
                     {'prompt': prompt} if kind == 'text' else {})
        save_png(grid, make_grid(images, columns), {'model': config.name, 'seeds': seed_list, 'backend': runner.name,
                                                    **condition})
        click.echo(f'wrote a grid of {len(images)} images to {grid}')
    else:
        out.mkdir(parents=True, exist_ok=True)
        for image, meta in zip(images, metadata):
            save_png(out / f'seed{meta["seed"]:06d}.png', image, meta)
        click.echo(f'wrote {len(images)} images to {out}/')
