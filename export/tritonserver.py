"""Start the real `tritonserver` that the nvidia-pytriton wheel ships, on a model repository.

Used to check the repositories of `sida export triton-repo` end to end (the python backend) on this machine. Two quirks:
the python-backend stub must match this interpreter's version (the wheel ships one per version),
and on a pyenv Python the stub must load *this* interpreter's libpython, so LD_LIBRARY_PATH starts
with sysconfig's LIBDIR (otherwise: "'_thread.RLock' object has no attribute '_recursion_count'").
"""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class TritonUnavailable(RuntimeError):
    pass


def _dist():
    try:
        from pytriton.utils.distribution import get_libs_path, get_root_module_path, get_stub_path
    except ImportError:
        raise TritonUnavailable('tritonserver comes with the nvidia-pytriton wheel: pip install nvidia-pytriton') from None
    root = get_root_module_path() / 'tritonserver'
    return root, get_libs_path(), get_stub_path(f'{sys.version_info[0]}.{sys.version_info[1]}')


def prepare_workspace(workspace):
    """Copy the server and its python backend, with the stub for this Python, into `workspace`."""
    dist, libs, stub = _dist()
    workspace = Path(workspace)
    target = workspace / 'tritonserver'
    if not (target / 'bin' / 'tritonserver').exists():
        shutil.copytree(dist, target, ignore=shutil.ignore_patterns('python_backend_stubs'), dirs_exist_ok=True)
        shutil.copy(stub, target / 'backends' / 'python' / 'triton_python_backend_stub')
    return target, libs


def server_env(libs):
    env = dict(os.environ)
    paths = [sysconfig.get_config_var('LIBDIR'), str(libs), env.get('LD_LIBRARY_PATH', '')]
    env['LD_LIBRARY_PATH'] = ':'.join(p for p in paths if p)
    python_paths = [str(ROOT), *site.getsitepackages(), env.get('PYTHONPATH', '')]
    env['PYTHONPATH'] = ':'.join(p for p in python_paths if p)
    env['PATH'] = f'{Path(sys.executable).parent}:{env.get("PATH", "")}'
    return env


def start(repository, workspace, http_port, grpc_port, metrics_port, log_path=None, extra_args=()):
    """Launch tritonserver (loopback only) and return the Popen; stop it with stop()."""
    server_dir, libs = prepare_workspace(workspace)
    cmd = [str(server_dir / 'bin' / 'tritonserver'), f'--model-repository={repository}',
           f'--backend-directory={server_dir / "backends"}', f'--cache-directory={server_dir / "caches"}',
           f'--http-port={http_port}', f'--grpc-port={grpc_port}', f'--metrics-port={metrics_port}',
           '--http-address=127.0.0.1', '--grpc-address=127.0.0.1', '--metrics-address=127.0.0.1',
           '--exit-on-error=true', '--strict-readiness=true', *extra_args]
    log = open(log_path, 'ab') if log_path else subprocess.DEVNULL
    return subprocess.Popen(cmd, env=server_env(libs), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(http_port, process, timeout=120):
    """A tritonclient HTTP client once the server is ready; pass it to stop(), which closes it."""
    import tritonclient.http as httpclient
    client = httpclient.InferenceServerClient(f'127.0.0.1:{http_port}')
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            client.close()
            raise TritonUnavailable(f'tritonserver exited with code {process.returncode} before becoming ready')
        try:
            if client.is_server_ready():
                return client
        except Exception:
            pass
        time.sleep(0.5)
    client.close()          # its connection would hold the server's shutdown (see stop())
    raise TritonUnavailable(f'tritonserver not ready after {timeout}s')


def stop(process, client=None, timeout=30):
    """Close `client` (wait_ready's) first: on SIGTERM tritonserver waits for its open HTTP connections to close, up to
    its exit timeout (30 s by default), and a client's kept-alive connection would hold it there that long."""
    try:
        if client is not None:
            client.close()
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
