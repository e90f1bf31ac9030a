"""`sida generate`: images from a bundle in one network evaluation each."""

from pathlib import Path

import click


def pick_device(name):
    import torch
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise click.BadParameter('CUDA is not available on this machine', param_hint='--device')
    return name


def resolve_class(config, name):
    """A class given by name (case-insensitive) or by index."""
    labels = config.label_names
    if name.isdigit() and int(name) < len(labels):
        return int(name)
    lowered = [x.lower() for x in labels]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    raise click.BadParameter(f'unknown class {name!r}; this model knows: {", ".join(labels)}', param_hint='--class')


@click.command(context_settings={'help_option_names': ['-h', '--help']})
@click.option('--bundle', 'bundle_dir', required=True, type=click.Path(file_okay=False, path_type=Path),
              help='Bundle directory (sida.json + generator.safetensors).')
@click.option('--seeds', default='0-15', show_default=True, help='Seeds: numbers and inclusive ranges, e.g. 0-63 or 1,5,9.')
@click.option('--class', 'class_name', default=None, help='Class name or index (class models); default: a class drawn per seed.')
@click.option('--prompt', default=None, help='Text prompt (text models).')
@click.option('--out', required=True, type=click.Path(path_type=Path),
              help='A .png file for one grid, or a directory for one PNG per seed.')
@click.option('--batch', default=64, show_default=True, type=click.IntRange(min=1), help='Images per forward pass.')
@click.option('--columns', default=None, type=click.IntRange(min=1), help='Grid columns (default: square).')
@click.option('--device', default='auto', show_default=True, type=click.Choice(['auto', 'cpu', 'cuda']),
              help='auto = cuda if available, else cpu.')
@click.option('--backend', default='torch', show_default=True, type=click.Choice(['torch']),
              help='Runtime; exported runtimes arrive with `sida export`.')
def generate(bundle_dir, seeds, class_name, prompt, out, batch, columns, device, backend):
    """Generate images from a bundle: one seed, one image, one network evaluation.

    \b
    sida generate --bundle models/zoo/cifar10-cond --seeds 0-63 --class cat --out cats.png
    sida generate --bundle my-text-bundle --prompt "a red car" --seeds 0-7 --out cars/
    """
    import torch
    from tqdm import tqdm

    from models.bundle import BundleError, load_bundle
    from models.images import make_grid, save_png
    from models.seeds import labels_for_seeds, noise_for_seeds, parse_seeds

    try:
        seed_list = parse_seeds(seeds)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint='--seeds') from None
    device = pick_device(device)
    try:
        bundle = load_bundle(bundle_dir, device=device)
    except BundleError as e:
        raise click.ClickException(str(e)) from None
    config, generator = bundle.config, bundle.generator
    kind = config.condition['kind']
    if kind != 'class' and class_name is not None:
        raise click.BadParameter(f'this model is {kind}-conditioned, it has no classes', param_hint='--class')
    if kind != 'text' and prompt is not None:
        raise click.BadParameter(f'this model is {kind}-conditioned, it takes no prompt', param_hint='--prompt')
    if kind == 'text' and not prompt:
        raise click.BadParameter('this model is text-conditioned: give --prompt', param_hint='--prompt')

    text_embeds = None
    if kind == 'text':
        from models.text_encoder import bundle_text_encoder
        text_embeds = bundle_text_encoder(config).encode([prompt])
    fixed_class = resolve_class(config, class_name) if class_name is not None else None

    images, metadata = [], []
    shape = (config.channels, config.resolution, config.resolution)
    with torch.inference_mode(), tqdm(total=len(seed_list), unit='img', desc='generate', disable=None) as bar:
        for start in range(0, len(seed_list), batch):
            chunk = seed_list[start:start + batch]
            noise = noise_for_seeds(chunk, shape).to(device)
            kwargs = {}
            if kind == 'class':
                labels = (torch.full((len(chunk),), fixed_class, dtype=torch.int64) if fixed_class is not None
                          else labels_for_seeds(chunk, len(config.label_names)))
                kwargs['class_labels'] = labels.to(device)
                metadata += [{'class': config.label_names[int(c)]} for c in labels]
            elif kind == 'text':
                kwargs['text_embeds'] = text_embeds.expand(len(chunk), -1, -1).to(device)
                metadata += [{'prompt': prompt}] * len(chunk)
            else:
                metadata += [{}] * len(chunk)
            images.append(generator(noise, **kwargs).cpu())
            bar.update(len(chunk))
    images = torch.cat(images).numpy()

    base = {'model': config.name, 'backend': backend, 'generator': 'sida'}
    if out.suffix.lower() == '.png':
        out.parent.mkdir(parents=True, exist_ok=True)
        save_png(out, make_grid(images, columns), {**base, 'seeds': seed_list})
        click.echo(f'wrote a grid of {len(images)} images to {out}')
    else:
        out.mkdir(parents=True, exist_ok=True)
        for seed, image, meta in zip(seed_list, images, metadata):
            save_png(out / f'seed{seed:06d}.png', image, {**base, 'seed': seed, **meta})
        click.echo(f'wrote {len(images)} images to {out}/')
