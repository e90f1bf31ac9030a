"""Text-to-image at scale, on a tiny random Stable-Diffusion-shaped pipeline built and saved by the test.

Teacher loading (schedule, epsilon/v prediction, guidance), SiD-LSG training through the real CLI, the latent
bundle (VAE decoder and CLIP inside), ONNX export behind its parity gate, and serving by prompt over HTTP.
"""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('diffusers', reason='the [t2i] extra is not installed')
pytest.importorskip('transformers', reason='the [t2i] extra is not installed')

from models.diffusers_teacher import Guided, alphas_cumprod, guided, load_unet_denoiser, schedule_sigmas  # noqa: E402
from models.random_sd import write_random_sd  # noqa: E402

SIDA = str(Path(sys.executable).parent / 'sida')
PROMPTS = ['a red car on a road', 'a ship at sea', 'a small bird on a branch', 'a cat on a sofa', 'a bowl of fruit']


@pytest.fixture(scope='module')
def sd_dir(tmp_path_factory):
    return write_random_sd(tmp_path_factory.mktemp('t2i') / 'tiny-sd')


@pytest.fixture(scope='module')
def teacher(sd_dir):
    torch.manual_seed(0)
    denoiser, spec = load_unet_denoiser(sd_dir)
    with torch.no_grad():                # a random UNet's output layer is near zero; make every path matter
        for p in denoiser.model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return denoiser.eval().requires_grad_(False), spec


def text_states(sd_dir, prompts):
    from models.text_encoder import ClipTextEncoder
    return ClipTextEncoder(sd_dir).encode(prompts)


@pytest.mark.parametrize('schedule', [dict(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012),
                                      dict(beta_schedule='linear', beta_start=0.0001, beta_end=0.02),
                                      dict(beta_schedule='squaredcos_cap_v2')])
def test_sigmas_match_the_diffusers_scheduler_at_every_timestep(schedule):
    from diffusers import DDPMScheduler
    abar = DDPMScheduler(num_train_timesteps=1000, **schedule).alphas_cumprod.double()
    ours = alphas_cumprod(1000, **schedule)
    assert torch.allclose(ours, abar, rtol=1e-4, atol=0)          # float32 cumprod over 1000 steps in diffusers
    # diffusers keeps abar in float32, so 1 - abar near t = 0 carries ~1e-3 relative error; ours are float64
    assert torch.allclose(schedule_sigmas(num_train_timesteps=1000, **schedule), ((1 - abar) / abar).sqrt(), rtol=1e-3, atol=0)


def test_timestep_of_a_table_sigma_is_that_integer_step(teacher):
    denoiser, _ = teacher
    t = torch.tensor([0, 1, 20, 500, 625, 979, 999])
    assert torch.allclose(denoiser.timestep(denoiser.sigma_at(t)), t.float(), atol=1e-3)
    assert abs(float(denoiser.sigma_at(625)) - 2.5017) < 1e-3          # SD's t_init 625 is sigma ~2.5, EDM's init sigma


@pytest.mark.parametrize('prediction', ['epsilon', 'v_prediction'])
def test_denoiser_is_the_schedulers_x0_prediction(tmp_path, prediction):
    """At integer steps D(x0 + sigma eps; sigma) equals x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar) of the UNet."""
    path = write_random_sd(tmp_path / 'sd', 'tiny', prediction_type=prediction)
    denoiser, _ = load_unet_denoiser(path)
    unet = denoiser.model
    t = torch.tensor([20, 400, 625, 979])
    abar = alphas_cumprod(1000, 0.00085, 0.012, 'scaled_linear')[t].float().reshape(-1, 1, 1, 1)
    x0, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    text = text_states(path, PROMPTS[:4])
    with torch.no_grad():
        out = unet(x_t, t, encoder_hidden_states=text).sample
        ref = (x_t - (1 - abar).sqrt() * out) / abar.sqrt() if prediction == 'epsilon' else abar.sqrt() * x_t - (1 - abar).sqrt() * out
        ours = denoiser(x_t / abar.sqrt(), denoiser.sigma_at(t), text_embeds=text)
    assert torch.allclose(ours, ref, atol=2e-4, rtol=1e-4)


def test_guidance_scale_one_is_the_conditional_denoiser_and_s_is_the_cfg_formula(sd_dir, teacher):
    denoiser, _ = teacher
    text = text_states(sd_dir, PROMPTS[:3])
    empty = text_states(sd_dir, [''])
    x, sigma = torch.randn(3, 4, 8, 8) * 3, torch.tensor([0.5, 2.0, 9.0])
    with torch.no_grad():
        d_c = denoiser(x, sigma, text_embeds=text)
        d_u = denoiser(x, sigma, text_embeds=empty.expand(3, -1, -1))
        assert torch.equal(guided(denoiser, x, sigma, text, empty, 1.0), d_c)
        for s in (2.0, 4.5):       # one batched [uncond; cond] call vs two calls: float32 batch effects (~1e-5) times s
            assert torch.allclose(Guided(denoiser, empty, s)(x, sigma, text_embeds=text), d_u + s * (d_c - d_u), atol=5e-4)
    assert (d_c - d_u).abs().max() > 0.1                     # the prompt matters, so the check above means something


def test_one_step_generator_is_lsg_t_init_formula(sd_dir, teacher):
    """G(z) = x0 prediction from x_625 = sqrt(1 - abar_625) z (a zero latent noised to step 625), as in SiD-LSG."""
    from models.generator import OneStepGenerator
    denoiser, _ = teacher
    g = OneStepGenerator(denoiser, init_sigma=float(denoiser.sigma_at(625)))
    z, text = torch.randn(2, 4, 8, 8), text_states(sd_dir, PROMPTS[:2])
    abar = alphas_cumprod(1000, 0.00085, 0.012, 'scaled_linear')[625].float()
    x_t = (1 - abar).sqrt() * z
    with torch.no_grad():
        eps = denoiser.model(x_t, torch.tensor([625, 625]), encoder_hidden_states=text).sample
        assert torch.allclose(g.denoise(z, text_embeds=text), (x_t - (1 - abar).sqrt() * eps) / abar.sqrt(), atol=2e-4)


def test_lsg_loss_is_zero_when_fake_equals_teacher(sd_dir, teacher):
    """f_psi == f_phi gives SiD's generator loss of exactly zero, guided or not (the LSG wiring adds no stray term)."""
    from train.sid import generator_loss
    denoiser, _ = teacher
    empty, text = text_states(sd_dir, ['']), text_states(sd_dir, PROMPTS[:2])
    x_g = torch.randn(2, 4, 8, 8, requires_grad=True)
    same = Guided(denoiser, empty, 3.0)
    loss, _, keep, _ = generator_loss(x_g, same, same, denoiser.sigma_at(torch.tensor([100, 700])), torch.randn(2, 4, 8, 8), 1.0,
                                      text_embeds=text)
    assert keep.all() and torch.equal(loss, torch.zeros(2))


@pytest.fixture(scope='module')
def trained(sd_dir, tmp_path_factory):
    """`sida train lsg` for a few steps on the CPU, through the real command line."""
    run = tmp_path_factory.mktemp('t2i') / 'run'
    prompts = run.parent / 'prompts.txt'
    prompts.write_text('\n'.join(PROMPTS) + '\n')
    train_lsg(sd_dir, prompts, run, 24)
    return run


def train_lsg(sd_dir, prompts, out, images, *extra):
    """The `trained` run's command line, stopped after `images`."""
    cmd = [SIDA, 'train', 'lsg', '--teacher', str(sd_dir), '--prompts', str(prompts), '--out', str(out), '--images', str(images),
           '--batch', '4', '--batch-gpu', '2', '--lr', '1e-4', '--guidance', '2', '--log-every', '4', '--sample-every', '12',
           '--checkpoint-every', '12', '--grad-checkpointing', '--device', 'cpu', *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_lsg_training_runs_and_writes_a_latent_bundle(trained, sd_dir):
    from models.bundle import load_bundle, validate_bundle
    rows = [json.loads(line) for line in (trained / 'log.jsonl').read_text().splitlines()]
    assert rows[-1]['images_seen'] == 24
    assert all(torch.isfinite(torch.tensor([r['loss_psi'], r['loss_g']])).all() for r in rows)
    config = validate_bundle(trained / 'bundle')
    assert config.latent and config.resolution == 8 and config.channels == 4 and config.image_resolution == 16
    assert config.condition == {'kind': 'text', 'encoder': 'clip:.', 'dim': 32, 'max_tokens': 76}
    assert config.provenance['method'] == 'sid-lsg' and config.provenance['hyperparameters']['guidance'] == 2.0
    assert list((trained / 'samples').glob('*.png'))                    # sample grids of decoded images were written
    # the generator moved away from the teacher's weights; the EMA copy is what the bundle holds
    student = load_bundle(trained / 'bundle').generator.denoiser.model.state_dict()
    teacher, _ = load_unet_denoiser(sd_dir)
    moved = max((student[k] - v).abs().max().item() for k, v in teacher.model.state_dict().items())
    assert moved > 1e-6


def _edit(bundle, **fields):
    config = json.loads((bundle / 'sida.json').read_text())
    config.update(fields)
    (bundle / 'sida.json').write_text(json.dumps(config))


def test_latent_bundle_refuses_tampered_or_missing_files_and_inconsistent_space(trained, tmp_path):
    import shutil

    from models.bundle import BundleError, validate_bundle
    fresh = lambda: shutil.copytree(trained / 'bundle', tmp_path / 'b', dirs_exist_ok=False)   # noqa: E731
    config = json.loads((trained / 'bundle' / 'sida.json').read_text())
    assert any(k.startswith('text_encoder/') and k.endswith('.safetensors') for k in config['sha256'])
    assert 'tokenizer/vocab.json' in config['sha256'] and 'vae.safetensors' in config['sha256']

    def flip_tail(file):
        file.write_bytes(file.read_bytes()[:-4] + b'abcd')

    vae_config = config['space']['vae_config']
    cases = {   # what is done to a copy -> what the error names
        'vae.safetensors.*hash mismatch': lambda b: flip_tail(b / 'vae.safetensors'),
        'text_encoder/model.safetensors.*hash mismatch': lambda b: flip_tail(b / 'text_encoder' / 'model.safetensors'),
        'tokenizer': lambda b: shutil.rmtree(b / 'tokenizer'),
        'points outside the bundle': lambda b: _edit(b, condition={**config['condition'], 'encoder': 'clip:..'}),
        'image_resolution': lambda b: _edit(b, space={**config['space'], 'image_resolution': 64}),
        'latent_channels': lambda b: _edit(b, space={**config['space'], 'vae_config': {**vae_config, 'latent_channels': 8}}),
        'works in a latent space': lambda b: _edit(b, space='pixel'),
    }
    for message, damage in cases.items():
        shutil.rmtree(tmp_path / 'b', ignore_errors=True)
        fresh()
        damage(tmp_path / 'b')
        with pytest.raises(BundleError, match=message):
            validate_bundle(tmp_path / 'b')


def test_distill_refuses_a_latent_teacher_and_lsg_refuses_bad_input(trained, sd_dir, tmp_path):
    run = lambda *a: subprocess.run([SIDA, 'train', *a], capture_output=True, text=True, timeout=120)   # noqa: E731
    r = run('distill', '--method', 'sid', '--teacher', str(trained / 'bundle'), '--out', str(tmp_path / 'x'))
    assert r.returncode == 2 and 'sida train lsg' in r.stderr
    r = run('distill', '--method', 'sid', '--teacher', str(sd_dir), '--out', str(tmp_path / 'x'))
    assert r.returncode == 2 and 'sida train lsg' in r.stderr
    prompts = tmp_path / 'p.txt'
    prompts.write_text('\n\n')
    r = run('lsg', '--teacher', str(sd_dir), '--prompts', str(prompts), '--out', str(tmp_path / 'y'))
    assert r.returncode == 1 and 'no prompts' in r.stderr and 'Traceback' not in r.stderr
    r = run('lsg', '--teacher', str(tmp_path), '--prompts', str(prompts), '--out', str(tmp_path / 'y'))
    assert r.returncode == 2 and 'not a diffusers directory' in r.stderr


def test_latent_bundle_exports_to_onnx_behind_the_parity_gate_and_serves_by_prompt(trained, tmp_path):
    import onnxruntime  # noqa: F401  (the [export] extra)
    from PIL import Image

    from export.onnx_export import export_onnx
    from tests.serve.conftest import Server
    bundle = tmp_path / 'bundle'
    import shutil
    shutil.copytree(trained / 'bundle', bundle)
    entry = export_onnx(bundle, log=lambda m: None)
    assert entry['parity']['passed'] and entry['exporter'] == 'dynamo'
    assert [o['shape'] for o in entry['outputs']] == [['N', 16, 16, 3], ['N', 3, 16, 16]]
    assert {i['name']: i['shape'] for i in entry['inputs']} == {'noise': ['N', 4, 8, 8], 'text_embeds': ['N', 77, 32]}

    server = Server('--bundle', bundle, '--backend', 'onnxruntime', '--no-ui', tmp_path=tmp_path)
    try:
        models = server.client.get('/v1/models').json()['data']
        assert models[0]['resolution'] == 16 and models[0]['backend'] == 'onnxruntime'
        r = server.client.post('/v1/generate', json={'prompt': 'a red car on a road', 'n': 2, 'seed': 3})
        assert r.status_code == 200, r.text
        images = [Image.open(io.BytesIO(__import__('base64').b64decode(im['b64']))) for im in r.json()['images']]
        assert [im.size for im in images] == [(16, 16), (16, 16)] and images[0].text['prompt'] == 'a red car on a road'
        r = server.client.post('/v1/images/generations', json={'prompt': 'a ship at sea', 'size': '16x16'})
        assert r.status_code == 200 and r.json()['data'][0]['b64_json']
        assert server.client.post('/v1/images/generations', json={'prompt': 'a ship', 'size': '512x512'}).status_code in (400, 422)
        assert server.client.post('/v1/generate', json={'n': 1}).status_code in (400, 422)        # a text model needs a prompt
    finally:
        server.stop()


def test_lsg_resumes_exactly(trained, sd_dir, tmp_path):
    """Stopped at 12 images and resumed to 24, the generator equals the uninterrupted 24-image run's, bit for bit."""
    from safetensors.torch import load_file
    prompts = trained.parent / 'prompts.txt'
    train_lsg(sd_dir, prompts, tmp_path / 'split', 12)
    assert 'resumed from' in train_lsg(sd_dir, prompts, tmp_path / 'split', 24, '--resume', 'auto').stderr
    a = load_file(str(trained / 'bundle' / 'generator.safetensors'))
    b = load_file(str(tmp_path / 'split' / 'bundle' / 'generator.safetensors'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_latent_bundle_in_a_triton_python_backend_repository_matches_pytorch(trained, tmp_path):
    """The repository carries every hashed file of the bundle (VAE, CLIP), and real tritonserver answers like PyTorch."""
    pytest.importorskip('pytriton', reason='nvidia-pytriton (which ships tritonserver) is not installed')
    import socket

    import numpy as np
    import tritonclient.http as httpclient

    from export import tritonserver
    from export.triton_repo import write_triton_repo
    from models.bundle import load_bundle
    from models.text_encoder import bundle_text_encoder

    def port():
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            return s.getsockname()[1]
    write_triton_repo(trained / 'bundle', tmp_path / 'repo', 'python', name='t2i', kind='KIND_CPU')
    bundle = load_bundle(tmp_path / 'repo' / 't2i' / '1' / 'bundle', return_float=True)       # validates every copied file
    text = bundle_text_encoder(bundle.config).encode(PROMPTS[:2]).numpy()
    noise = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    http = port()
    process = tritonserver.start(tmp_path / 'repo', tmp_path / 'ws', http, port(), port(), log_path=tmp_path / 'triton.log')
    client = None
    try:
        client = tritonserver.wait_ready(http, process, timeout=180)
        inputs = [httpclient.InferInput('noise', noise.shape, 'FP32'), httpclient.InferInput('text_embeds', text.shape, 'FP32')]
        inputs[0].set_data_from_numpy(noise)
        inputs[1].set_data_from_numpy(text)
        result = client.infer('t2i', inputs)
        with torch.no_grad():
            images, floats = bundle.generator(torch.from_numpy(noise), text_embeds=torch.from_numpy(text))
        assert result.as_numpy('images').shape == (2, 16, 16, 3)
        assert np.abs(result.as_numpy('images_float') - floats.numpy()).max() < 1e-4
    finally:
        tritonserver.stop(process, client)
