"""The rooms import each other only along the edges drawn in docs/architecture.md."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ('sida', 'models', 'train', 'export', 'serve', 'ui', 'bench')


def allowed_edges():
    block = re.search(r'```edges\n(.*?)```', (ROOT / 'docs' / 'architecture.md').read_text(), re.S).group(1)
    edges = {}
    for line in block.strip().splitlines():
        source, _, targets = line.partition('->')
        edges[source.strip()] = {t.strip() for t in targets.split(',') if t.strip()}
    return edges


def imported_rooms(path):
    """Rooms a module imports, wherever the import sits (top level, function body, TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            room = name.split('.')[0]
            if room in ROOMS:
                yield room, node.lineno


def test_every_room_is_drawn():
    assert set(allowed_edges()) == set(ROOMS)


def test_imports_follow_the_drawn_edges():
    edges = allowed_edges()
    wrong = []
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob('*.py')):
            for target, line in imported_rooms(path):
                if target != room and target not in edges[room]:
                    wrong.append(f'{path.relative_to(ROOT)}:{line} imports {target} ({room} -> {target} is not drawn)')
    assert not wrong, 'imports not drawn in docs/architecture.md:\n' + '\n'.join(wrong)


def test_the_checker_sees_function_level_imports(tmp_path):
    module = tmp_path / 'm.py'
    module.write_text('def f():\n    from serve.backends import make_backend\n    import bench.cli\n')
    assert sorted(imported_rooms(module)) == [('bench', 3), ('serve', 2)]
