"""Print the project's requirements (its dependencies plus the chosen extras) from pyproject.toml, one per line.

The Dockerfile installs these in a layer of their own, before it copies the source, so a code change does not
reinstall torch and the rest. `--exclude torch` leaves a package out: the CUDA image keeps its base image's
torch (built for that image's CUDA, cuDNN and TensorRT) instead of pulling another one from PyPI.

    python deploy/requirements.py text,export,serve --exclude torch > requirements.txt
"""

import argparse
import re
import sys
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / 'pyproject.toml'


def canonical(name):
    return re.sub(r'[-_.]+', '-', name).lower()


def requirement_name(requirement):
    return canonical(re.match(r'\s*([A-Za-z0-9][A-Za-z0-9._-]*)', requirement).group(1))


def requirements(pyproject=PYPROJECT, extras=(), exclude=()):
    project = tomllib.loads(Path(pyproject).read_text())['project']
    optional = project.get('optional-dependencies', {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise ValueError(f'unknown extras {unknown}; pyproject.toml has {sorted(optional)}')
    skip = {canonical(name) for name in exclude}
    chosen = []
    for requirement in [*project['dependencies'], *(r for extra in extras for r in optional[extra])]:
        if requirement_name(requirement) not in skip and requirement not in chosen:
            chosen.append(requirement)
    return chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('extras', nargs='?', default='', help='comma-separated extras, e.g. text,export,serve')
    parser.add_argument('--exclude', action='append', default=[], help='leave this package out (repeatable)')
    parser.add_argument('--pyproject', default=str(PYPROJECT))
    args = parser.parse_args(argv)
    extras = [e for e in args.extras.split(',') if e]
    try:
        print('\n'.join(requirements(args.pyproject, extras, args.exclude)))
    except ValueError as e:
        sys.exit(f'requirements.py: {e}')


if __name__ == '__main__':
    main()
