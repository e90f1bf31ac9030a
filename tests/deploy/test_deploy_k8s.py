"""deploy/k8s: every manifest valid against the Kubernetes API's own JSON schemas (kubernetes-validate ships them, so
this runs offline), and consistent with the product: the probes' paths are the app's routes, the SIDA_* variables
are real settings, the writable paths are volumes under a read-only root, the autoscaler's metric is one the
server exports."""

import re
from pathlib import Path

import pytest
import yaml

from serve.settings import Settings

kubernetes_validate = pytest.importorskip('kubernetes_validate', reason='the [dev] extra brings kubernetes-validate')

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / 'deploy' / 'k8s'
KUBERNETES = '1.30.0'       # the oldest release still supported upstream when this was written: what clusters run
SETTING_NAMES = {f'SIDA_{name.upper()}' for name in Settings.model_fields}


def manifests():
    """{kind: object} of every manifest the kustomization applies."""
    kustomization = yaml.safe_load((K8S / 'kustomization.yaml').read_text())
    objects = {}
    for name in kustomization['resources']:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            objects[doc['kind']] = doc
    return objects


@pytest.fixture(scope='module')
def k8s():
    return manifests()


@pytest.fixture(scope='module')
def pod(k8s):
    return k8s['Deployment']['spec']['template']


@pytest.fixture(scope='module')
def container(pod):
    (only,) = pod['spec']['containers']
    return only


def test_the_kustomization_applies_every_manifest_here():
    listed = set(yaml.safe_load((K8S / 'kustomization.yaml').read_text())['resources'])
    assert listed == {p.name for p in K8S.glob('*.yaml')} - {'kustomization.yaml'}


def test_every_manifest_is_valid_for_the_kubernetes_api(k8s):
    assert set(k8s) == {'Deployment', 'Service', 'HorizontalPodAutoscaler', 'PodDisruptionBudget', 'ConfigMap'}
    for doc in k8s.values():
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)      # raises with the offending field


def test_the_validator_would_catch_a_mistake(k8s):
    import copy
    broken = copy.deepcopy(k8s['Deployment'])
    broken['spec']['template']['spec']['containers'][0]['readinesProbe'] = {'httpGet': {'path': '/readyz', 'port': 8000}}
    with pytest.raises(kubernetes_validate.ValidationError, match='readinesProbe'):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)
    broken = copy.deepcopy(k8s['HorizontalPodAutoscaler'])
    del broken['spec']['scaleTargetRef']
    with pytest.raises(kubernetes_validate.ValidationError, match='scaleTargetRef'):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_non_root_with_a_read_only_root_filesystem(pod, container):
    user = re.search(r'^USER (\d+):(\d+)$', (ROOT / 'Dockerfile').read_text(), re.M)
    security = pod['spec']['securityContext']
    assert security['runAsNonRoot'] and (security['runAsUser'], security['runAsGroup']) == tuple(map(int, user.groups()))
    assert container['securityContext'] == {'allowPrivilegeEscalation': False, 'readOnlyRootFilesystem': True,
                                             'capabilities': {'drop': ['ALL']}}
    assert pod['spec']['automountServiceAccountToken'] is False


def test_every_path_sida_writes_is_a_volume(pod, container):
    """The root filesystem is read-only: the compile cache, temporary files and other caches must land on volumes,
    and the API keys file on the Secret's mount."""
    env = {e['name']: e['value'] for e in container['env']}
    mounts = {m['mountPath']: m for m in container['volumeMounts']}
    volumes = {v['name']: v for v in pod['spec']['volumes']}
    assert {m['name'] for m in mounts.values()} == set(volumes)

    def mount_of(path):
        return next((m for p, m in mounts.items() if path == p or path.startswith(p + '/')), None)
    for name in ('SIDA_CACHE_DIR', 'TRITON_CACHE_DIR', 'TRITON_HOME', 'XDG_CACHE_HOME', 'TMPDIR'):
        mount = mount_of(env[name])
        assert mount is not None and not mount.get('readOnly'), name
    keys = mount_of(env['SIDA_API_KEYS_FILE'])
    assert keys['readOnly'] and 'secret' in volumes[keys['name']]
    assert mount_of('/tmp') is not None and mount_of('/dev/shm') is not None


def test_sida_variables_are_real_settings_that_validate(container, monkeypatch):
    env = {e['name']: e['value'] for e in container['env']}
    assert {k for k in env if k.startswith('SIDA_')} - SETTING_NAMES == {'SIDA_CACHE_DIR'}   # read by export/compile_cache.py
    for key, value in env.items():
        if key.startswith('SIDA_'):
            monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.host == '0.0.0.0' and settings.devices == ['all'] and settings.workers == 1
    assert str(settings.port) == env['SIDA_PORT'] == str(container['ports'][0]['containerPort'])


def test_one_gpu_per_pod_and_probes_on_the_apps_health_routes(container):
    from serve.app import create_app
    routes = set(create_app(Settings(ui=False)).openapi()['paths'])
    assert container['resources']['limits']['nvidia.com/gpu'] == container['resources']['requests']['nvidia.com/gpu']
    probes = {k: container[k]['httpGet'] for k in ('startupProbe', 'livenessProbe', 'readinessProbe')}
    assert probes['readinessProbe']['path'] == '/readyz' and probes['livenessProbe']['path'] == '/healthz'
    for probe in probes.values():
        assert probe['path'] in routes and probe['port'] == container['ports'][0]['name']


def test_service_and_disruption_budget_select_the_pods(k8s, pod, container):
    labels = pod['metadata']['labels']
    for selector in (k8s['Service']['spec']['selector'], k8s['PodDisruptionBudget']['spec']['selector']['matchLabels'],
                     k8s['Deployment']['spec']['selector']['matchLabels']):
        assert selector.items() <= labels.items()
    assert k8s['Service']['spec']['ports'][0]['targetPort'] in {p['name'] for p in container['ports']}


def test_the_autoscaler_scales_the_deployment_on_a_metric_the_server_exports(k8s):
    from serve.metrics import Metrics
    hpa = k8s['HorizontalPodAutoscaler']['spec']
    deployment = k8s['Deployment']
    assert (hpa['scaleTargetRef']['kind'], hpa['scaleTargetRef']['name']) == (deployment['kind'], deployment['metadata']['name'])
    metric = hpa['metrics'][0]['pods']['metric']['name']
    exported = {m.name for m in Metrics().registry.collect()}
    assert metric in exported and metric == 'sida_queue_images'
    rules = yaml.safe_load(k8s['ConfigMap']['data']['config.yaml'])['rules']
    (rule,) = [r for r in rules if r['name']['as'] == metric]
    assert rule['seriesQuery'].startswith(metric + '{') and set(rule['resources']['overrides']) == {'namespace', 'pod'}
