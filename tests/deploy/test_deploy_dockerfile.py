"""The Dockerfile, read by BuildKit's own parser: stages, bases, user, ports, health check, what gets copied."""

import fnmatch
import os
import re
import subprocess
import sys

import pytest
import tomllib

from serve.settings import Settings
from tests.deploy.conftest import ROOT, RUNTIME_TARGETS, dockerignore_patterns, dockerignored, in_checkout, resolve, tool

PYPROJECT = tomllib.loads((ROOT / 'pyproject.toml').read_text())
SERVE_PORT = Settings.model_fields['port'].default


def copies(stage):
    """(sources, destination, flags) of each COPY/ADD of a stage."""
    return [(c.value[:-1], c.value[-1], c.flags) for c in stage.commands if c.cmd in ('COPY', 'ADD')]


def test_stages_build_then_run_for_cpu_and_cuda_with_cuda_as_the_default(dockerfile_model):
    assert list(dockerfile_model.stages) == ['cpu-build', 'cpu', 'cuda-build', 'cuda']
    assert list(dockerfile_model.stages)[-1] == 'cuda'        # `docker build .` builds the last stage
    for target in RUNTIME_TARGETS:
        assert dockerfile_model.stages[target].base == dockerfile_model.stages[f'{target}-build'].base


def test_bases_are_pinned_images_and_the_cuda_one_is_nvidias(dockerfile_model):
    bases = {name: resolve(stage.base, dockerfile_model.args) for name, stage in dockerfile_model.stages.items()}
    for name, image in bases.items():
        repository, _, tag = image.rpartition(':')
        assert repository and tag and tag != 'latest' and '/' not in tag, f'{name}: base {image!r} needs a pinned tag'
    assert re.fullmatch(r'nvcr\.io/nvidia/(pytorch|tritonserver):\d\d\.\d\d-py3', bases['cuda']), bases['cuda']
    assert re.fullmatch(r'python:3\.1[0-9]-slim(-\w+)?', bases['cpu']), bases['cpu']


def test_runtime_stages_run_as_a_non_root_user_they_create(dockerfile_model):
    for target in RUNTIME_TARGETS:
        stage = dockerfile_model.stages[target]
        user = stage.last('USER').value[0]
        uid = user.split(':')[0]
        assert uid not in ('root', '0', ''), f'{target} runs as {user!r}'
        created = ' '.join(' '.join(c.value) for c in stage.all('RUN') if 'useradd' in ' '.join(c.value))
        assert re.search(rf'--uid {uid}\b', created), f'{target}: USER {user} but no useradd --uid {uid}'
        # Nothing after USER switches back to root.
        after = stage.commands[stage.commands.index(stage.last('USER')):]
        assert [c.cmd for c in after].count('USER') == 1


def test_runtime_stages_expose_the_serve_port_and_health_check_readyz(dockerfile_model):
    commands = {}
    for target in RUNTIME_TARGETS:
        stage = dockerfile_model.stages[target]
        exposed = [p.split('/')[0] for c in stage.all('EXPOSE') for p in c.value]
        env = stage.env()
        assert env['SIDA_PORT'] == str(SERVE_PORT) and exposed == [str(SERVE_PORT)], (target, env, exposed)
        assert env['SIDA_HOST'] == '0.0.0.0', 'inside a container the API must listen beyond loopback'
        check = stage.last('HEALTHCHECK')
        assert check is not None and check.value[0] == 'CMD' and check.json, f'{target}: exec-form HEALTHCHECK CMD'
        flags = dict(f.lstrip('-').split('=', 1) for f in check.flags)
        assert {'interval', 'timeout', 'start-period', 'retries'} <= set(flags), flags
        script = in_checkout(check.value[-1])
        assert script.is_file() and '/readyz' in script.read_text()
        commands[target] = (check.value, stage.last('ENTRYPOINT').value)
    assert commands['cpu'] == commands['cuda'], 'both targets start and health-check the same way'


def test_the_entrypoint_is_an_executable_script_of_this_checkout(dockerfile_model):
    for target in RUNTIME_TARGETS:
        entrypoint = dockerfile_model.stages[target].last('ENTRYPOINT')
        assert entrypoint.json and len(entrypoint.value) == 1, 'exec form, so the script (then sida) is PID 1 and gets SIGTERM'
        script = in_checkout(entrypoint.value[0])
        assert script.is_file() and os.access(script, os.X_OK), script
        assert re.search(r'^exec "\$@"$', script.read_text(), re.M), 'the script must exec, not fork, the server'


def test_every_copy_source_exists_and_is_not_dockerignored(dockerfile_model):
    patterns = dockerignore_patterns()
    names = list(dockerfile_model.stages)
    for name, stage in dockerfile_model.stages.items():
        for sources, _, flags in copies(stage):
            source_stage = next((f.split('=', 1)[1] for f in flags if f.startswith('--from=')), None)
            if source_stage is not None:
                assert source_stage in names[:names.index(name)], f'{name}: COPY --from={source_stage} is not an earlier stage'
                continue
            for source in sources:
                assert (ROOT / source).exists(), f'{name}: COPY {source}: not in the repository'
                assert not dockerignored(source.rstrip('/'), patterns), f'{name}: COPY {source} is excluded by .dockerignore'


def test_build_stages_copy_every_package_the_project_installs(dockerfile_model):
    include = PYPROJECT['tool']['setuptools']['packages']['find']['include']
    packages = sorted(p.name for p in ROOT.iterdir() if (p / '__init__.py').is_file() and any(fnmatch.fnmatch(p.name, i) for i in include))
    assert {'sida', 'models', 'train', 'export', 'serve', 'ui'} <= set(packages)
    for name in ('cpu-build', 'cuda-build'):
        copied = {s.rstrip('/') for sources, _, flags in copies(dockerfile_model.stages[name]) if not flags for s in sources}
        missing = set(packages) - copied
        assert not missing, f'{name} does not copy {sorted(missing)}'


def test_dockerignore_keeps_heavy_and_private_paths_out():
    patterns = dockerignore_patterns()
    for path in ['.venv/bin/python', 'runs/sida/checkpoints/x.safetensors', 'carry/cifar10-jpeg.tar.gz', 'build/demo-bundle/sida.json',
                 '.git/HEAD', 'serve/__pycache__/app.cpython-311.pyc', '.pytest_cache/v', '.ruff_cache/x', 'sida.egg-info/PKG-INFO',
                 'tests/serve/test_api.py', '.env', 'notes.tmp', 'models/zoo/cifar10-cond-teacher/generator.safetensors']:
        assert dockerignored(path, patterns), f'{path} would be sent to the Docker build'
    for path in ['pyproject.toml', 'README.md', 'serve/app.py', 'models/zoo/cifar10-cond/generator.safetensors',
                 'models/zoo/cifar10-text/sida.json', 'deploy/entrypoint.sh']:
        assert not dockerignored(path, patterns), f'{path} is needed in the image'


def test_image_extras_exist_and_the_requirements_layer_matches_pyproject(dockerfile_model):
    extras = dockerfile_model.args['SIDA_EXTRAS'].split(',')
    assert set(extras) <= set(PYPROJECT['project']['optional-dependencies']), extras
    assert {'serve', 'export'} <= set(extras)
    out = subprocess.run([sys.executable, str(ROOT / 'deploy' / 'requirements.py'), ','.join(extras), '--exclude', 'torch'],
                         capture_output=True, text=True, check=True).stdout.split()
    expected = [r for r in PYPROJECT['project']['dependencies'] if not r.startswith('torch')]
    expected += [r for e in extras for r in PYPROJECT['project']['optional-dependencies'][e]]
    assert out == list(dict.fromkeys(expected))
    bad = subprocess.run([sys.executable, str(ROOT / 'deploy' / 'requirements.py'), 'no-such-extra'], capture_output=True, text=True)
    assert bad.returncode != 0 and 'no-such-extra' in bad.stderr


def test_entrypoint_flags_exist_on_the_installed_sida_serve():
    from serve.cli import serve
    assert PYPROJECT['project']['scripts']['sida'] == 'sida.cli:main'
    options = {o for p in serve.params for o in p.opts}
    used = set(re.findall(r'set -- "\$@" (--[a-z-]+)', (ROOT / 'deploy' / 'entrypoint.sh').read_text()))
    assert used and used <= options, used - options


def test_hadolint_passes():
    result = subprocess.run([tool('hadolint'), '--no-color', str(ROOT / 'Dockerfile')], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize('script', ['entrypoint.sh', 'model-repository.sh'])
def test_shell_scripts_pass_shellcheck(script):
    result = subprocess.run([tool('shellcheck'), str(ROOT / 'deploy' / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
