"""The layers of the project, read from its own imports with `ast` (module-level and inside functions).

  app/                         the `galaxyvit` command line and the demo: may import everything
  load_tests/                  may import serving, catalog, inference, training and the core
  serving/  catalog/           side by side on inference and the core: never import each other
  training/                    on the core alone: never imports inference, serving or catalog
  inference/                   torch-free ONNX Runtime, decoding, scoring: on the core alone
  galaxyvit/                   the core: imports nothing of the project above it

Nothing imports from tests/ but the tests themselves. An import is also `importlib.import_module("x")`,
`__import__("x")` and a child process started with `-m x`. And no module is longer than 350 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "galaxyvit",
    "inference",
    "training",
    "serving",
    "catalog",
    "load_tests",
    "app",
    "scripts",
    "benchmarks",
    "tests",
)
TEST_MODULES = {"tests"} | {p.stem for p in (ROOT / "tests").glob("*.py")}  # tests/ is on sys.path in the tests
# what each layer may import of the project, besides itself
ALLOWED = {
    "galaxyvit": set(),
    "inference": {"galaxyvit"},
    "training": {"galaxyvit"},
    "serving": {"galaxyvit", "inference"},
    "catalog": {"galaxyvit", "inference"},
    "load_tests": {"galaxyvit", "inference", "training", "serving", "catalog"},
    "app": {"galaxyvit", "inference", "training", "serving", "catalog", "load_tests"},
    "scripts": {"galaxyvit", "inference", "training", "serving", "catalog", "load_tests", "app"},
    "benchmarks": {"galaxyvit", "inference", "training", "serving", "catalog", "load_tests"},
    "tests": set(PACKAGES),
}
MAX_LINES = 350
LONG_ALLOWED = {"training/synthetic.py"}  # the synthetic galaxy renderer: one long, self-contained recipe


def project_files(packages: tuple[str, ...] = PACKAGES) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module the file `path` imports, wherever the import statement stands."""
    return imports_in(path.read_text(), ".".join(path.relative_to(ROOT).parts[:-1]), str(path))


def imports_in(source: str, package: str, filename: str = "<source>") -> set[str]:
    """Every module `source`, a file of `package`, imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the file's own package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            else:
                found.add(node.module or "")
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("importlib.import_module", "__import__"):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found | dash_m_modules(source)  # child processes: [python, "-m", "module", ...]


def dash_m_modules(source: str) -> set[str]:
    """The modules `source` runs as `python -m MODULE` (a list or tuple literal holding "-m", "MODULE")."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.List | ast.Tuple):
            values = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            found.update(v for k, v in zip(values, values[1:]) if k == "-m" and isinstance(v, str))
    return found


def layer_of(module: str) -> str | None:
    """The project layer a module belongs to, or None for the standard library and third parties."""
    top = module.split(".")[0]
    if top in TEST_MODULES:
        return "tests"
    return top if top in PACKAGES else None


def layer_violations() -> list[str]:
    problems = []
    for path in project_files():
        own = path.relative_to(ROOT).parts[0]
        for module in sorted(imported_modules(path)):
            layer = layer_of(module)
            if layer is not None and layer != own and layer not in ALLOWED[own]:
                problems.append(f"{path.relative_to(ROOT)} imports {module} ({own} must not import {layer})")
    return problems


def test_the_import_reader_sees_every_kind_of_import():
    source = (
        "import os\nfrom serving import client\n"
        "def f():\n    import training.export\n    from . import sibling\n    from ..core import x\n"
        "    importlib.import_module('load_tests.sweep')\n    __import__('app')\n"
        "    subprocess.run([sys.executable, '-m', 'scripts.soak', 'x'])\n"
    )
    found = imports_in(source, "galaxyvit.sub")
    expected = {"os", "serving", "training.export", "galaxyvit.sub", "galaxyvit.core", "load_tests.sweep", "app"}
    assert found == expected | {"scripts.soak"}
    assert layer_of("serving_fixtures") == "tests" and layer_of("tests.conftest") == "tests"
    assert layer_of("numpy") is None and layer_of("training.export") == "training"


def test_layers_point_one_way():
    assert layer_violations() == []


def test_the_core_imports_nothing_above_it():
    """Spelled out for the core: galaxyvit/ imports none of training, serving, load_tests, app, tests, scripts."""
    above = {"inference", "training", "serving", "catalog", "load_tests", "app", "tests", "scripts", "benchmarks"}
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if layer_of(m) in above)
        for path in project_files(("galaxyvit",))
    }
    assert {file: modules for file, modules in offenders.items() if modules} == {}


def test_every_module_run_with_dash_m_can_run():
    """`python -m X` of a project module needs X.py or X/__main__.py (e.g. the command line is `-m app`)."""
    missing = []
    for path in project_files():
        for module in sorted(dash_m_modules(path.read_text())):
            target = ROOT / module.replace(".", "/")
            runnable = target.with_suffix(".py").is_file() or (target / "__main__.py").is_file()
            if layer_of(module) is not None and not runnable:
                missing.append(f"{path.relative_to(ROOT)} runs `python -m {module}`, which cannot run")
    assert missing == []


def test_catalog_and_serving_never_import_each_other():
    """The catalogue engines and the service share inference/ and the core, not each other's modules."""
    crossing = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if layer_of(m) == other)
        for own, other in (("catalog", "serving"), ("serving", "catalog"))
        for path in project_files((own,))
    }
    assert {file: modules for file, modules in crossing.items() if modules} == {}


def test_inference_is_torch_free():
    """inference/ runs in the service's processes and on Ray workers without PyTorch."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if m.split(".")[0] == "torch")
        for path in project_files(("inference",))
    }
    assert {file: modules for file, modules in offenders.items() if modules} == {}


def test_no_module_is_longer_than_350_lines():
    """Offenders as {file: lines}; the synthetic renderer is the one allowed exception."""
    code = ("galaxyvit", "inference", "training", "serving", "catalog", "load_tests", "app", "scripts", "benchmarks")
    lengths = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in project_files(code)}
    too_long = {file: n for file, n in lengths.items() if n > MAX_LINES and file not in LONG_ALLOWED}
    assert not too_long, "longer than 350 lines: " + ", ".join(f"{file} ({n})" for file, n in sorted(too_long.items()))
