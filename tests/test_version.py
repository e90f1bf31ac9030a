"""One version: sida/__init__.py holds it; the command, the installed metadata and the HTTP API report it."""

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import sida

ROOT = Path(__file__).resolve().parents[1]


def test_the_command_the_metadata_and_the_api_agree():
    from serve.app import create_app
    from serve.settings import Settings
    out = subprocess.run([sys.executable, '-m', 'sida.cli', '--version'], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f'sida, version {sida.__version__}'
    assert importlib.metadata.version('sida') == sida.__version__
    assert create_app(Settings(ui=False), models=[]).version == sida.__version__


def test_no_other_file_hard_codes_the_version():
    tracked = subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r'''version\s*[=:]\s*['"]''' + re.escape(sida.__version__) + '|' +
                         r'''['"]''' + re.escape(sida.__version__) + r'''['"]''')
    found = [name for name in tracked
             if name != 'sida/__init__.py' and Path(name).suffix in ('.py', '.toml', '.cfg', '.yaml', '.yml', '.json', '.md', '.sh')
             and not name.startswith(('bench/results/', 'tests/data/'))
             and (ROOT / name).is_file() and pattern.search((ROOT / name).read_text(errors='replace'))]
    assert found == []
