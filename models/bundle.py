"""The bundle: sida.json + generator.safetensors, the one contract between train, export and serve.

    bundle/
      sida.json               format, name, architecture, resolution, channels, space, condition,
                              init_sigma, sigma_data, provenance, sha256 {file: hex}
      generator.safetensors   the generator's denoiser weights (EMA), float32 / float16 / bfloat16
      vae.safetensors         latent bundles: the VAE decoder the graph ends with (space names its config)
      text_encoder/ tokenizer/  latent text bundles: the CLIP text encoder, when condition.encoder is 'clip:.'
      exports/                written by `sida export` (manifest.json + one folder per runtime)

Every malformed bundle fails with a BundleError naming the file, the field and what was expected.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import struct
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from models.architecture import ArchitectureError, build_denoiser, geometry
from models.generator import OneStepGenerator, VaeDecoder

FORMAT = 'sida-bundle/1'
CONFIG_FILE = 'sida.json'
WEIGHTS_FILE = 'generator.safetensors'
VAE_FILE = 'vae.safetensors'
VAE_DECODER_KEYS = ('decoder.', 'post_quant_conv.')     # what decoding needs of an AutoencoderKL
TEXT_ENCODER_DIRS = ('text_encoder', 'tokenizer')       # a CLIP encoder kept inside a latent bundle ('clip:.')
LATENT_NETWORKS = {'UNet2DConditionModel'}
PICKLED = ('*.bin', '*.pt', '*.pth', '*.ckpt', '*.pkl', '*.msgpack', '*.h5')   # never copied: safetensors only
SAVE_DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}
LOADABLE_DTYPES = {'F32', 'F16', 'BF16'}


class BundleError(ValueError):
    def __init__(self, path, field, message):
        self.path, self.field = str(path), field
        super().__init__(f'{path}: {field}: {message}' if field else f'{path}: {message}')


def is_teacher(config):
    """A teacher bundle (`sida train teacher`) holds a denoiser for the many-step EDM sampler, not a one-step generator."""
    return config.provenance.get('method') == 'edm-teacher'


def require_one_step(config, path):
    """Serving or sampling a teacher in one step gives blurred class means, not images: refuse it, saying what to do."""
    if is_teacher(config):
        raise BundleError(path, None, 'a teacher (a denoiser for the many-step EDM sampler), not a one-step generator: '
                                      f'distil it first (sida train distill --teacher {path} ...)')


@dataclasses.dataclass
class BundleConfig:
    name: str
    architecture: dict
    resolution: int
    channels: int
    condition: dict
    init_sigma: float = 2.5
    sigma_data: float = 0.5
    space: str | dict = 'pixel'        # or {"kind": "latent", "vae": "vae.safetensors", "vae_config", "scaling_factor", ...}
    provenance: dict = dataclasses.field(default_factory=dict)
    sha256: dict = dataclasses.field(default_factory=dict)
    format: str = FORMAT

    @property
    def latent(self):
        return isinstance(self.space, dict)

    @property
    def image_resolution(self):
        """Side of the output images (the VAE's for latent bundles; `resolution` is the noise's)."""
        return self.space['image_resolution'] if self.latent else self.resolution

    @property
    def image_channels(self):
        return 3 if self.latent else self.channels

    @property
    def label_names(self):
        return list(self.condition.get('labels', [])) if self.condition['kind'] == 'class' else []

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2) + '\n'


@dataclasses.dataclass
class Bundle:
    path: Path
    config: BundleConfig
    generator: OneStepGenerator


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _atomic_write_bytes(path, data):
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_safetensors(tensors, path, metadata=None):
    """safetensors' save_file, with the file readable as any other file this process writes: save_file creates it
    0600 whatever the umask, and a bundle is often read by another user (a container's, a server's)."""
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~current_umask())


def current_umask():
    """The process's umask, read without setting it (os.umask would change it for every thread for a moment)."""
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('Umask:'):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022          # no /proc (not Linux): the common default


def _write_tensors(path, file, state, dtype):
    tensors = {k: v.detach().to('cpu', SAVE_DTYPES[dtype] if v.is_floating_point() else v.dtype).contiguous()
               for k, v in state.items()}
    tmp = path / (file + '.tmp')
    save_safetensors(tensors, tmp, metadata={'format': FORMAT})
    os.replace(tmp, path / file)
    return sha256_file(path / file)


def save_bundle(path, generator, *, name, condition, provenance=None, dtype='float32', architecture, vae=None,
                text_encoder_from=None):
    """Write `generator` (its denoiser's weights) and its config as a bundle directory.

    Latent generators also give `vae` (a diffusers AutoencoderKL: its decoder is stored) and, for a CLIP text
    condition kept inside the bundle ('clip:.'), `text_encoder_from`: a directory with text_encoder/ and tokenizer/.
    The weights are written first and the config last (both atomically), so a reader never sees a
    config whose hash does not describe the weights beside it.
    """
    if dtype not in SAVE_DTYPES:
        raise ValueError(f'dtype must be one of {sorted(SAVE_DTYPES)}, got {dtype!r}')
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sha = {WEIGHTS_FILE: _write_tensors(path, WEIGHTS_FILE, generator.denoiser.state_dict(), dtype)}
    space = 'pixel'
    if vae is not None:
        decoder = {k: v for k, v in vae.state_dict().items() if k.startswith(VAE_DECODER_KEYS)}
        sha[VAE_FILE] = _write_tensors(path, VAE_FILE, decoder, dtype)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        from models.diffusers_teacher import constructor_kwargs
        space = {'kind': 'latent', 'vae': VAE_FILE, 'vae_config': constructor_kwargs(type(vae), vae.config),
                 'scaling_factor': float(vae.config.scaling_factor), 'shift_factor': vae.config.get('shift_factor'),
                 'image_resolution': geometry(architecture)[0] * factor}
    if text_encoder_from is not None:
        import shutil
        for sub in TEXT_ENCODER_DIRS:
            shutil.copytree(Path(text_encoder_from) / sub, path / sub, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*PICKLED))
            for f in sorted((path / sub).rglob('*')):          # every file of the encoder is hashed like the weights
                if f.is_file():
                    sha[f.relative_to(path).as_posix()] = sha256_file(f)
    resolution, channels = geometry(architecture)[:2]
    config = BundleConfig(
        name=name, architecture=architecture, resolution=resolution, channels=channels,
        condition=condition, init_sigma=generator.init_sigma,
        sigma_data=architecture.get('precond_kwargs', {}).get('sigma_data', 1.0 if vae is not None else 0.5),
        space=space, provenance=dict(provenance or {}), sha256=sha,
    )
    _check_config(path / CONFIG_FILE, config)
    _atomic_write_bytes(path / CONFIG_FILE, config.to_json().encode())
    return config


def build_vae(vae_config, device=None):
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise BundleError('', 'space', 'a latent bundle needs diffusers for its VAE decoder: pip install "sida[t2i]"') from None
    with torch.device(device) if device else contextlib.nullcontext():
        vae = AutoencoderKL(**vae_config)
    vae.encoder, vae.quant_conv = None, None        # decoding never uses them; their weights are not stored
    return vae


def read_config(path):
    """Parse and check sida.json alone (no weights)."""
    file = Path(path) / CONFIG_FILE
    if not Path(path).is_dir():
        raise BundleError(path, None, 'not a directory; a bundle is a directory holding sida.json and generator.safetensors')
    if not file.is_file():
        raise BundleError(file, None, 'missing; a bundle directory must contain sida.json')
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(file, None, f'not valid JSON ({e})') from None
    if not isinstance(raw, dict):
        raise BundleError(file, None, 'expected a JSON object')
    if raw.get('format') != FORMAT:
        raise BundleError(file, 'format', f'expected {FORMAT!r}, got {raw.get("format")!r}')
    fields = {f.name: f for f in dataclasses.fields(BundleConfig)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise BundleError(file, unknown[0], f'unknown field; known fields: {sorted(fields)}')
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for name in required:
        if name not in raw:
            raise BundleError(file, name, 'missing required field')
    config = BundleConfig(**raw)
    _check_config(file, config)
    config.root = Path(path)        # not a field: where files the config names (e.g. 'clip:.') are found
    return config


def _check_config(file, c):
    def expect(ok, field, message):
        if not ok:
            raise BundleError(file, field, message)

    expect(isinstance(c.name, str) and c.name, 'name', 'expected a non-empty string')
    expect(isinstance(c.resolution, int) and c.resolution > 0, 'resolution', f'expected a positive integer, got {c.resolution!r}')
    expect(isinstance(c.channels, int) and c.channels > 0, 'channels', f'expected a positive integer, got {c.channels!r}')
    expect(isinstance(c.init_sigma, (int, float)) and c.init_sigma > 0, 'init_sigma', f'expected a positive number, got {c.init_sigma!r}')
    expect(isinstance(c.sigma_data, (int, float)) and c.sigma_data > 0, 'sigma_data', f'expected a positive number, got {c.sigma_data!r}')
    if c.latent:
        sp = c.space
        expect(sp.get('kind') == 'latent' and sp.get('vae') == VAE_FILE, 'space',
               f'expected {{"kind": "latent", "vae": "{VAE_FILE}", ...}}, got kind={sp.get("kind")!r} vae={sp.get("vae")!r}')
        expect(isinstance(sp.get('vae_config'), dict), 'space.vae_config', 'expected the AutoencoderKL config object')
        expect(isinstance(sp.get('scaling_factor'), (int, float)) and sp['scaling_factor'] > 0, 'space.scaling_factor',
               'expected a positive number')
        expect(isinstance(sp.get('image_resolution'), int) and sp['image_resolution'] > 0, 'space.image_resolution',
               'expected a positive integer')
        vae = sp['vae_config']
        if isinstance(vae.get('latent_channels'), int):
            expect(vae['latent_channels'] == c.channels, 'space.vae_config.latent_channels',
                   f'{vae["latent_channels"]} disagrees with the generator\'s {c.channels} channels')
        if isinstance(vae.get('block_out_channels'), list):
            side = c.resolution * 2 ** (len(vae['block_out_channels']) - 1)
            expect(sp['image_resolution'] == side, 'space.image_resolution',
                   f'{sp["image_resolution"]} disagrees with the VAE: {c.resolution} latents decode to {side}')
    else:
        expect(c.space == 'pixel', 'space', f'expected "pixel" or a latent-space object, got {c.space!r}')
    network = c.architecture.get('network') if isinstance(c.architecture, dict) else None
    expect((network in LATENT_NETWORKS) == c.latent, 'space',
           f'network {network} works in {"a latent" if network in LATENT_NETWORKS else "pixel"} space, but space is {c.space!r}')
    expect(isinstance(c.provenance, dict), 'provenance', 'expected an object')
    expect(isinstance(c.sha256, dict), 'sha256', 'expected an object {file: hex digest}')
    expect(isinstance(c.architecture, dict) and isinstance(c.architecture.get('network_kwargs'), dict), 'architecture',
           'expected {"precond": ..., "network": ..., "network_kwargs": {...}}')

    expect(isinstance(c.architecture.get('network'), str), 'architecture.network', 'expected the network class name')
    resolution, in_ch, out_ch, label_dim, text_dim = geometry(c.architecture)
    expect(resolution == c.resolution, 'resolution', f'{c.resolution} disagrees with the network\'s resolution {resolution}')
    expect(in_ch == c.channels == out_ch, 'channels', f'{c.channels} disagrees with the network in/out channels {in_ch}/{out_ch}')

    cond = c.condition
    expect(isinstance(cond, dict) and cond.get('kind') in ('class', 'text', 'none'), 'condition',
           f'expected {{"kind": "class"|"text"|"none", ...}}, got {cond!r}')
    if cond['kind'] == 'class':
        labels = cond.get('labels')
        expect(isinstance(labels, list) and all(isinstance(x, str) for x in labels), 'condition.labels',
               'expected a list of class names')
        expect(len(labels) == label_dim, 'condition.labels',
               f'{len(labels)} names but the network has label_dim={label_dim}')
        expect(len(set(labels)) == len(labels), 'condition.labels', 'class names must be unique')
    elif cond['kind'] == 'text':
        expect(isinstance(cond.get('dim'), int) and cond['dim'] == text_dim, 'condition.dim',
               f'expected the network text_dim={text_dim}, got {cond.get("dim")!r}')
        expect(isinstance(cond.get('encoder'), str), 'condition.encoder', 'expected the text encoder name or path')
        expect(isinstance(cond.get('max_tokens'), int) and cond['max_tokens'] > 0, 'condition.max_tokens',
               'expected a positive integer')
    else:
        expect(label_dim == 0 and text_dim == 0, 'condition',
               f'"none" but the network has label_dim={label_dim}, text_dim={text_dim}')


def _safetensors_header(file):
    """Read the header; report a truncated or corrupt file before safetensors does, in plain words."""
    size = file.stat().st_size
    with open(file, 'rb') as f:
        head = f.read(8)
        if len(head) < 8:
            raise BundleError(file, None, f'truncated: {size} bytes, too short to hold a safetensors header')
        (n,) = struct.unpack('<Q', head)
        if 8 + n > size:
            raise BundleError(file, None, f'truncated: header declares {n} bytes but the file has {size}')
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BundleError(file, None, 'not a safetensors file (unreadable header)') from None
    ends = [v['data_offsets'][1] for k, v in header.items() if k != '__metadata__']
    data_size = size - 8 - n
    if ends and max(ends) > data_size:
        raise BundleError(file, None, f'truncated: tensors need {max(ends)} bytes of data, the file holds {data_size}')
    return {k: v for k, v in header.items() if k != '__metadata__'}


def _check_weights_file(path, config, name, build, what, check_hash):
    """The file exists, is whole, has the recorded hash and exactly the tensors, with their shapes, of the module that
    build() makes (called once the file itself has passed: a broken file costs no network build); returns it."""
    file = path / name
    if not file.is_file():
        raise BundleError(file, None, f'missing; the bundle must contain {name}')
    header = _safetensors_header(file)
    if check_hash:
        expected = config.sha256.get(name)
        if not expected:
            raise BundleError(path / CONFIG_FILE, f'sha256.{name}', 'missing; expected the weights\' sha256 hex digest')
        actual = sha256_file(file)
        if actual != expected:
            raise BundleError(file, 'sha256', f'hash mismatch: sida.json says {expected}, the file is {actual} '
                                              '(corrupted or replaced weights)')
    module = build()
    expected = {k: list(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if missing:
        raise BundleError(file, missing[0], f'missing tensor ({len(missing)} missing in all) for {what}')
    if unexpected:
        raise BundleError(file, unexpected[0], f'unexpected tensor ({len(unexpected)} in all) for {what}')
    for key, shape in expected.items():
        if header[key]['shape'] != shape:
            raise BundleError(file, key, f'shape {header[key]["shape"]}, expected {shape}')
        if header[key]['dtype'] not in LOADABLE_DTYPES:
            raise BundleError(file, key, f'dtype {header[key]["dtype"]}, expected one of {sorted(LOADABLE_DTYPES)}')
    return module


def _build_denoiser(path, config, device):
    """The network `config` describes, on `device` (None: torch's default device)."""
    try:
        with torch.device(device) if device else contextlib.nullcontext():
            return build_denoiser(config.architecture)
    except ArchitectureError as e:
        raise BundleError(path / CONFIG_FILE, 'architecture', str(e)) from None


def _build_vae(path, config, device):
    try:
        return build_vae(config.space['vae_config'], device=device)
    except (TypeError, ValueError) as e:
        raise BundleError(path / CONFIG_FILE, 'space.vae_config', f'not an AutoencoderKL config ({e})') from None
    except BundleError as e:
        raise BundleError(path / CONFIG_FILE, e.field, str(e).split(': ', 1)[-1]) from None


def validate_bundle(path, check_hash=True):
    """Check a bundle completely without loading its weights into memory; return its config."""
    return _checked(Path(path), check_hash, 'meta')[0]


def _checked(path, check_hash, device):
    """validate_bundle's checks, with the network built on `device` ('meta' holds no memory); (config, network).
    load_bundle checks against the network it then loads: a second build on the meta device, only to check, cost an
    eager server's start a second or more (its first op imported torch._dynamo)."""
    config = read_config(path)
    denoiser = _check_weights_file(path, config, WEIGHTS_FILE, lambda: _build_denoiser(path, config, device),
                                   config.architecture['network'], check_hash)
    if config.latent:
        _check_weights_file(path, config, VAE_FILE, lambda: _build_vae(path, config, 'meta'), 'the AutoencoderKL decoder',
                            check_hash)
    encoder = config.condition.get('encoder', '') if config.condition['kind'] == 'text' else ''
    if encoder.startswith('clip:'):
        from models.text_encoder import resolve_clip_root
        root = resolve_clip_root(encoder, path).resolve()
        if not root.is_relative_to(path.resolve()):
            raise BundleError(path / CONFIG_FILE, 'condition.encoder', f'{encoder!r} points outside the bundle; keep the encoder inside')
        for sub in ('text_encoder/config.json', 'tokenizer'):
            if not (root / sub).exists():
                raise BundleError(root / sub, 'condition.encoder', f'missing; {encoder!r} needs text_encoder/ and tokenizer/ there')
        if not any(k.startswith('text_encoder/') and k.endswith('.safetensors') for k in config.sha256):
            raise BundleError(path / CONFIG_FILE, 'sha256', 'no hashed text_encoder/*.safetensors: the CLIP weights must be '
                                                             'safetensors recorded in sha256')
    for name, expected in config.sha256.items():          # the encoder's files (the weights were checked above)
        if name in (WEIGHTS_FILE, VAE_FILE):
            continue
        file = path / name
        if not file.resolve().is_relative_to(path.resolve()) or not file.is_file():
            raise BundleError(file, None, 'missing; sida.json records its sha256')
        if check_hash and sha256_file(file) != expected:
            raise BundleError(file, 'sha256', f'hash mismatch: sida.json says {expected} (corrupted or replaced file)')
    return config, denoiser


def _read_tensors(file, dtype):
    with safe_open(str(file), framework='pt') as f:
        return {k: (t.to(dtype) if t.is_floating_point() else t) for k in f.keys() for t in [f.get_tensor(k)]}


def load_bundle(path, device='cpu', dtype=torch.float32, check_hash=True, return_float=False):
    """Validate, build and load; the generator comes back in eval mode on `device`."""
    path = Path(path)
    config, denoiser = _checked(path, check_hash, None)
    denoiser.load_state_dict(_read_tensors(path / WEIGHTS_FILE, dtype), strict=True)
    if config.latent:
        vae = build_vae(config.space['vae_config'])
        vae.load_state_dict(_read_tensors(path / VAE_FILE, dtype), strict=True)
        decoder = VaeDecoder(vae.eval(), config.space['scaling_factor'], config.space.get('shift_factor'))
    else:
        decoder = None
    generator = OneStepGenerator(denoiser, init_sigma=config.init_sigma, return_float=return_float, decoder=decoder)
    return Bundle(path=path, config=config, generator=generator.eval().requires_grad_(False).to(device))
