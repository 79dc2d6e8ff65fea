"""The layers of docs/architecture.md, checked on the source: no import cycle, no lower layer importing a higher one.

Every import is counted, module level or inside a function."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "riskcl"
# docs/architecture.md, "Layers": a module may import its own layer (without cycles) and the layers below.
LAYERS = [
    ("util", ["riskcl._names", "riskcl._lazy", "riskcl.requirements", "riskcl._checks", "riskcl.defaults",
              "riskcl.io", "riskcl.machine"]),
    ("core", ["riskcl", "riskcl.taxonomy", "riskcl.losses", "riskcl.metrics", "riskcl.decision"]),
    ("components", ["riskcl.data", "riskcl.models", "riskcl.distributed", "riskcl.engine", "riskcl.tasks"]),
    ("config", ["riskcl.config"]),
    ("experiment", ["riskcl.experiment"]),
    ("report", ["riskcl.report"]),
    ("deploy", ["riskcl.deploy"]),
    ("cli", ["riskcl.cli", "riskcl.__main__"]),
]


def _module_name(path: Path) -> str:
    parts = ["riskcl", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def layer_of(module: str) -> int:
    best, level = -1, None
    for k, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), k
    assert level is not None, f"{module} belongs to no layer of docs/architecture.md"
    return level


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            # `from pkg import mod` imports pkg.mod; `from pkg import name` imports pkg
            names = [f"{root}.{a.name}" if f"{root}.{a.name}" in MODULES else root for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and name.startswith("riskcl"):
                found.add(name)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer_and_imports_only_downwards():
    wrong = [(m, d) for m, deps in GRAPH.items() for d in deps if layer_of(d) > layer_of(m)]
    assert not wrong, "lower layers importing higher ones: " + ", ".join(f"{m} -> {d}" for m, d in wrong)


def test_no_import_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH[m]):
            if d.startswith(m + "."):
                continue  # a package's __init__ re-exporting its own members
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_the_checker_can_fail():
    assert layer_of("riskcl.cli.main") > layer_of("riskcl.experiment.run") > layer_of("riskcl.engine.loop")
    assert "riskcl.experiment.folder" in GRAPH["riskcl.experiment.run"]
    assert "riskcl.io" in GRAPH["riskcl.data.images"]


def _run_folder_names() -> set[str]:
    from riskcl.experiment.folder import FILES, PREDICTIONS

    return set(FILES.values()) | set(PREDICTIONS.values())


def _spelled_names(module: str, names: set[str]) -> list[str]:
    """String constants in ``module`` that are exactly a run-folder file name (prose mentioning one is fine)."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    return [f"{module}:{n.lineno} {n.value!r}" for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in names]


def test_only_the_run_folder_module_spells_run_folder_file_names():
    names = _run_folder_names()
    found = [hit for m in MODULES if m != "riskcl.experiment.folder" for hit in _spelled_names(m, names)]
    assert found == [], f"run-folder file names spelled outside experiment/folder.py: {found}"


def test_the_file_name_check_can_fail(tmp_path, monkeypatch):
    bad = tmp_path / "bad.py"
    bad.write_text('PATH = "calibration.json"\n')
    monkeypatch.setitem(MODULES, "riskcl.bad", bad)
    assert _spelled_names("riskcl.bad", _run_folder_names()) == ["riskcl.bad:1 'calibration.json'"]
