"""The structure the docs promise: no import cycle, and a query path that never loads PyTorch."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lookalike.embedders import DEFAULT_EMBEDDER

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ["torch", "torchvision", "pytorch_metric_learning", "matplotlib", "sklearn"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every lookalike module `path` imports: at the top, inside a function, or for type annotations only
    (under TYPE_CHECKING): a cycle through any of them is still a cycle in the design."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name in modules)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for alias in child.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:
                        found.add(sub)
                    elif target in modules:
                        found.add(target)
            visit(child)

    visit(ast.parse(path.read_text()))
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = list((SRC / "lookalike").rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            connect(v)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 30 and "lookalike.collection" in graph["lookalike.cli.search"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_lazy_import_cycle() -> None:
    graph = import_graph()
    graph["lookalike.embedders"] = {*graph["lookalike.embedders"], "lookalike.training"}  # the old, lazy one
    assert any("lookalike.embedders" in c and "lookalike.collection" in c for c in cycles(graph))


def test_embedders_never_import_training() -> None:
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("lookalike.embedders"):
            assert not [t for t in targets if t.startswith("lookalike.training")], name


def _run(code: str, cwd: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300, env=os.environ.copy()
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


HEAVY_LOADED = f"[m for m in {HEAVY!r} if m in sys.modules]"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, Path]:
    """A collection of the sample photos, indexed in another process (so this one's imports do not count)."""
    from conftest import copy_samples

    root = copy_samples(data_dir, tmp_path_factory.mktemp("arch") / "photos")
    collection = root.parent / "collection"
    code = (
        "import sys, json\nfrom lookalike.cli.main import main\n"
        f"assert main(['index', {str(root)!r}, '--collection', {str(collection)!r}, '--json']) == 0\n"
        "print(json.dumps({}))"
    )
    _run(code, root.parent)
    return root, collection


def test_searching_through_the_python_api_never_imports_torch(indexed: tuple[Path, Path]) -> None:
    root, collection = indexed
    code = (
        "import sys, json\nfrom lookalike import Collection\n"
        f"with Collection.open({str(collection)!r}, create=False) as c:\n"
        f"    hits = c.search({str(root / 'cat' / 'cat.1.jpg')!r}, k=3)\n"
        f"    new = c.search(open({str(root / 'dog' / 'dog.2.jpg')!r}, 'rb').read(), k=3, box=(0, 0, 120, 120))\n"
        f"print(json.dumps({{'hits': len(hits), 'new': len(new), 'heavy': {HEAVY_LOADED}}}))"
    )
    out = _run(code, root.parent)
    assert out == {"hits": 3, "new": 3, "heavy": []}


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "{root}/cat/cat.1.jpg", "-k", "3"],
        ["search", "--text", "dog", "-k", "3"],
        ["index", "{root}"],
        ["stats"],
        ["evaluate", "{root}", "--out", "{tmp}/report", "--no-visuals"],
    ],
    ids=["search", "search-text", "index-unchanged", "stats", "evaluate-stored"],
)
def test_the_command_line_never_imports_torch_once_models_are_exported(
    indexed: tuple[Path, Path], tmp_path: Path, argv: list[str]
) -> None:
    root, collection = indexed
    args = [a.format(root=root, tmp=tmp_path) for a in argv] + ["--collection", str(collection)]
    code = (
        "import sys, json, contextlib, io\nfrom lookalike.cli.main import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n    code = main({args!r})\n"
        f"print(json.dumps({{'code': code, 'heavy': {HEAVY_LOADED}}}))"
    )
    assert _run(code, root.parent) == {"code": 0, "heavy": []}


def test_serving_never_imports_torch(indexed: tuple[Path, Path]) -> None:
    root, collection = indexed
    code = (
        "import sys, json\nfrom fastapi.testclient import TestClient\nfrom lookalike import Collection\n"
        "from lookalike.server import create_app\n"
        f"with Collection.open({str(collection)!r}, create=False) as c:\n"
        "    client = TestClient(create_app(c))\n"
        f"    data = open({str(root / 'dog' / 'dog.5.jpg')!r}, 'rb').read()\n"
        "    r = client.post('/api/search?k=2', files={'file': ('q.jpg', data, 'image/jpeg')})\n"
        "    t = client.get('/api/search/text?q=dog&k=2')\n"
        f"print(json.dumps({{'status': [r.status_code, t.status_code], 'heavy': {HEAVY_LOADED}}}))"
    )
    assert _run(code, root.parent) == {"status": [200, 200], "heavy": []}


def test_the_first_use_of_a_network_says_it_is_being_prepared(tmp_path: Path) -> None:
    """A fresh cache: the export is announced once on stderr, the exporter's own warnings are not shown."""
    env = {**os.environ, "LOOKALIKE_CACHE": str(tmp_path / "cache")}
    (tmp_path / "photos").mkdir()
    argv = ["index", str(tmp_path / "photos"), "--collection", str(tmp_path / "collection")]

    def run() -> subprocess.CompletedProcess[str]:
        code = f"import sys\nfrom lookalike.cli.main import main\nsys.exit(main({argv!r}))"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)

    first = run()
    assert first.returncode == 0, first.stderr
    assert f"preparing {DEFAULT_EMBEDDER} for fast inference, once" in first.stderr
    assert "Warning" not in first.stderr and "warn" not in first.stderr.lower()
    second = run()
    assert second.returncode == 0 and "preparing" not in second.stderr
