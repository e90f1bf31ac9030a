"""The GPU machines have torch, numpy, click, tqdm, matplotlib and safetensors, but no server stack: `sida bench generate`,
`teacher-vs-student` and `train` must run without ever importing it."""

import subprocess
import sys
import textwrap

SERVER_ONLY = ['fastapi', 'pydantic', 'pydantic_settings', 'uvicorn', 'starlette', 'gradio', 'prometheus_client',
               'sentence_transformers', 'httpx', 'aiohttp']


def test_generate_and_teacher_vs_student_run_with_the_server_stack_unimportable(tiny_bundle, tmp_path):
    script = textwrap.dedent(f'''
        import sys
        for name in {SERVER_ONLY!r}:
            sys.modules[name] = None            # `import name` now raises ImportError, as on the GPU machine
        from click.testing import CliRunner
        from sida.cli import main
        import bench.train_throughput                 # `sida bench train`'s code
        bundle, out = {str(tiny_bundle)!r}, {str(tmp_path)!r}
        for args in (['generate', '--bundle', bundle, '--backends', 'torch-fp32,tensorrt', '--batch', '1', '--runs', '1',
                      '--warmup', '0', '--warmup-seconds', '0', '--no-plot', '--out', out],
                     ['teacher-vs-student', '--teacher', bundle, '--student', bundle, '--batch', '1', '--runs', '1', '--nfe', '1',
                      '--warmup', '0', '--warmup-seconds', '0', '--no-plot', '--out', out]):
            result = CliRunner().invoke(main, ['bench', *args])
            assert result.exit_code == 0, (args[0], result.output, result.exception)
        loaded = [name for name in {SERVER_ONLY!r} if sys.modules.get(name) is not None]
        assert not loaded, loaded
        print('ok')
    ''')
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith('ok'), done.stdout + done.stderr
    assert len(list(tmp_path.glob('*/*.json'))) == 2
