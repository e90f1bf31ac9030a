"""deploy/compose.yaml: services wired to each other, sida's settings by their real names, and `docker compose config`."""

import json
import os
import re
import subprocess
from urllib.parse import urlparse

import pytest
import yaml

from serve.settings import Settings
from tests.deploy.conftest import ROOT, in_checkout, parse_dockerfile, resolve, tool

SETTING_NAMES = {f'SIDA_{name.upper()}' for name in Settings.model_fields}
# Names deploy/entrypoint.sh turns into `sida serve` flags (it reads them as ${NAME:-}).
ENTRYPOINT_NAMES = set(re.findall(r'\$\{(SIDA_\w+):-\}', (ROOT / 'deploy' / 'entrypoint.sh').read_text()))
SERVE_PORT = Settings.model_fields['port'].default
COMPOSE_VARIABLES = set(re.findall(r'\$\{(\w+)', (ROOT / 'deploy' / 'compose.yaml').read_text()))


def environment(service):
    env = service.get('environment') or {}
    if isinstance(env, list):
        env = dict(item.split('=', 1) for item in env)
    return {k: resolve(str(v), {}) for k, v in env.items()}


def container_ports(service):
    return [int(str(p).rsplit(':', 1)[-1].split('/')[0]) for p in service.get('ports', [])]


def volume_targets(service):
    return {resolve(v, {}).split(':')[1]: resolve(v, {}).split(':')[0] for v in service.get('volumes', [])}


def test_services_api_triton_and_the_one_shot_model_repository(compose):
    services = compose['services']
    assert {'api', 'triton', 'model-repository'} <= set(services)
    assert services['prometheus'].get('profiles') == ['monitoring'], 'monitoring is optional'
    stages = parse_dockerfile().stages
    for name in ('api', 'model-repository'):
        build = services[name]['build']
        assert build['target'] in stages and build['target'] == 'cuda'
        assert (ROOT / 'deploy' / build['context'] / build['dockerfile']).resolve() == ROOT / 'Dockerfile'


def test_sida_environment_names_are_real_settings_and_validate(compose, monkeypatch):
    assert ENTRYPOINT_NAMES == {'SIDA_CONFIG', 'SIDA_TRITON'}
    for name, service in compose['services'].items():
        unknown = {k for k in environment(service) if k.startswith('SIDA_')} - SETTING_NAMES - ENTRYPOINT_NAMES
        assert not unknown, f'{name}: {sorted(unknown)} are not settings in serve/settings.py'
    for key in list(os.environ):
        if key.startswith('SIDA_'):
            monkeypatch.delenv(key)
    for key, value in environment(compose['services']['api']).items():
        monkeypatch.setenv(key, value)
    settings = Settings()       # the api container's settings, parsed and validated the way sida does it
    assert settings.backend == 'triton' and settings.port == SERVE_PORT and settings.host == '0.0.0.0'
    assert settings.bundles == ['/bundles/demo-untrained-ddpmpp']


def test_api_publishes_the_serve_port_health_checks_readyz_and_waits_for_triton(compose):
    api = compose['services']['api']
    assert container_ports(api) == [SERVE_PORT]
    test = api['healthcheck']['test']
    assert test[0] == 'CMD' and in_checkout(test[-1]) == ROOT / 'deploy' / 'healthcheck.py'
    assert '/readyz' in (ROOT / 'deploy' / 'healthcheck.py').read_text()
    assert api['depends_on']['triton']['condition'] == 'service_healthy'
    assert 'deploy' not in api, 'the API needs no GPU (Triton has them), so it scales anywhere'
    assert volume_targets(api)['/bundles'] == volume_targets(compose['services']['model-repository'])['/bundles']


def test_triton_serves_the_repository_that_model_repository_writes(compose):
    services = compose['services']
    triton, maker = services['triton'], services['model-repository']
    command = triton['command']
    assert command[0] == 'tritonserver'
    repository = next(a.split('=', 1)[1] for a in command if a.startswith('--model-repository='))
    assert volume_targets(triton)[repository] == 'model-repository'
    maker_command = [resolve(a, {}) for a in maker['command']]
    assert in_checkout(maker_command[0]) == ROOT / 'deploy' / 'model-repository.sh'
    out = maker_command[2]
    assert volume_targets(maker)[out] == 'model-repository' and maker_command[3] in ('tensorrt', 'onnxruntime')
    assert triton['depends_on']['model-repository']['condition'] == 'service_completed_successfully'
    assert 'v2/health/ready' in ' '.join(triton['healthcheck']['test'])
    # The API's --triton-url names the triton service and its HTTP port.
    url = urlparse(environment(services['api'])['SIDA_TRITON_URL'])
    assert url.hostname == 'triton' and str(url.port) in triton['expose']


def test_gpus_are_reserved_where_the_work_runs(compose):
    for name in ('triton', 'model-repository'):
        devices = compose['services'][name]['deploy']['resources']['reservations']['devices']
        assert devices[0]['driver'] == 'nvidia' and devices[0]['capabilities'] == ['gpu'], name


def test_triton_and_the_cuda_image_come_from_one_ngc_release(compose):
    """A TensorRT engine built in the sida image loads only in the tritonserver with the same TensorRT."""
    cuda = resolve(parse_dockerfile().stages['cuda'].base, parse_dockerfile().args)
    triton = resolve(compose['services']['triton']['image'], {})
    assert cuda.split(':')[1].split('-')[0] == triton.split(':')[1].split('-')[0], (cuda, triton)


def test_prometheus_scrapes_every_replica_of_the_services_it_names(compose):
    prometheus = compose['services']['prometheus']
    config_path = volume_targets(prometheus)['/etc/prometheus/prometheus.yml']
    config = yaml.safe_load((ROOT / 'deploy' / config_path).read_text())
    ports = {'api': SERVE_PORT, 'triton': 8002}
    jobs = {job['job_name']: job for job in config['scrape_configs']}
    for job in jobs.values():
        for sd in job['dns_sd_configs']:
            for service in sd['names']:
                assert service in compose['services'] and sd['port'] == ports[service], (job['job_name'], sd)
    assert jobs['sida-api']['metrics_path'] == '/metrics'


@pytest.mark.parametrize('variables', [{}, {'BUNDLES_DIR': '/srv/bundles', 'TRITON_RUNTIME': 'onnxruntime', 'BUNDLE': 'cifar10'}])
def test_docker_compose_accepts_the_file(variables):
    """Compose's own loader (schema, interpolation, merge keys), which needs no Docker engine."""
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES} | variables
    result = subprocess.run([tool('docker-compose'), '-f', str(ROOT / 'deploy' / 'compose.yaml'), '--profile', 'monitoring',
                             'config', '--format', 'json'], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    api = resolved['services']['api']
    bundle = variables.get('BUNDLE', 'demo-untrained-ddpmpp')
    assert json.loads(api['environment']['SIDA_BUNDLES']) == [f'/bundles/{bundle}']
    assert resolved['services']['model-repository']['command'][-1] == variables.get('TRITON_RUNTIME', 'tensorrt')
    mounts = {m['target']: m for m in api['volumes']}
    assert mounts['/bundles']['source'] == variables.get('BUNDLES_DIR', 'bundles') and mounts['/bundles']['read_only']
