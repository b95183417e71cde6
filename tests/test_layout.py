"""The architecture stays visible: one folder per step with its parts, and no step reaching into another."""

import ast
import importlib
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS_FOLDERS = ["serve", "regenerate", "train_heads", "evaluate", "export", "register"]


@pytest.mark.parametrize("step", STEPS_FOLDERS)
def test_each_step_folder_has_config_logic_component_readme_and_tests(step):
    folder = ROOT / "components" / step
    assert (folder / "config.py").is_file() and (folder / "component.py").is_file()
    assert (folder / "README.md").read_text().strip()
    assert list((folder / "tests").glob("test_*.py"))
    logic = [p for p in folder.glob("*.py") if p.name not in ("__init__.py", "config.py", "component.py")]
    assert any("def run(" in p.read_text() for p in logic)


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("step", STEPS_FOLDERS)
def test_no_step_imports_another_steps_code(step):
    """Step code only; a step's integration tests may use another step to produce their input."""
    for path in (ROOT / "components" / step).glob("*.py"):
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[:2] == ["spectrain", "components"] and len(parts) > 2:
                assert parts[2] == step, f"{path.relative_to(ROOT)} imports {module}"


def test_components_import_no_heavy_step_code_at_module_level():
    """KFP component files are loaded by the orchestrator: only kfp and spectrain at the top."""
    for path in (ROOT / "components").glob("*/component.py"):
        top_level = {
            n.module if isinstance(n, ast.ImportFrom) else n.names[0].name
            for n in ast.parse(path.read_text()).body
            if isinstance(n, (ast.Import, ast.ImportFrom))
        }
        assert top_level <= {"kfp", "kfp.dsl", "spectrain", "typing"}, (path, top_level)


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
# The floors, bottom to top (docs/architecture.md): each imports only its own floor and those below it.
FLOORS = ["spectrain", "spectrain.components", "spectrain.pipelines", "spectrain.operations", "spectrain.cli"]


def folder_of(package: str) -> Path:
    """Where a package of the installed namespace lives in the checkout (pyproject's package-dir)."""
    for prefix, folder in sorted(PYPROJECT["package-dir"].items(), key=lambda item: -len(item[0])):
        if package == prefix or package.startswith(prefix + "."):
            return ROOT / folder / package[len(prefix) :].lstrip(".").replace(".", "/")
    return ROOT / package.replace(".", "/")


def product_modules() -> dict[str, Path]:
    """Every module the wheel installs, by its import name."""
    modules = {}
    for package in PYPROJECT["packages"]:
        folder = folder_of(package)
        modules[package] = folder / "__init__.py"
        for path in folder.glob("*.py"):
            if path.name != "__init__.py":
                modules[f"{package}.{path.stem}"] = path
    return modules


def test_the_packages_are_every_folder_of_the_floors_and_nothing_else():
    """pyproject lists the packages (a mapped layout cannot be found by setuptools' find): a new subpackage missing
    from the list would be missing from the wheel and the images; tests and the rig never ship."""
    found = {
        ".".join((package, *init.parent.relative_to(folder_of(package)).parts))
        for package in FLOORS
        for init in folder_of(package).rglob("__init__.py")
        if "tests" not in init.relative_to(ROOT).parts
    }
    assert sorted(PYPROJECT["packages"]) == sorted(found)
    assert all(name == "spectrain" or name.startswith("spectrain.") for name in PYPROJECT["packages"])


def test_the_product_imports_neither_its_test_rig_nor_the_pod_simulation():
    """Test servers and fakes live in tests/support/, the pod simulation in podsim/ (a development tool run from
    the checkout); the packages the images install import neither."""
    for name, path in product_modules().items():
        for module in imported_modules(path):
            assert module.split(".")[0] not in ("tests", "podsim", "components", "pipelines"), (
                f"{name} imports {module}"
            )


def first_party_import_graph() -> dict[str, set[str]]:
    """Module -> the first-party modules it imports anywhere in its code (lazy imports included)."""
    paths = product_modules()
    graph = {}
    for name, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {m for m in found if m in paths and m != name and not name.startswith(m + ".")}
    return graph


def floor(module: str) -> int:
    return max(i for i, prefix in enumerate(FLOORS) if module == prefix or module.startswith(prefix + "."))


def test_every_floor_imports_only_downward_and_the_import_graph_has_no_cycles():
    """No exception: the library imports no step, a step no pipeline, the pipeline no client or command."""
    graph = first_party_import_graph()
    assert {floor(name) for name in graph} == set(range(len(FLOORS)))
    upward = [
        f"{name} imports {module}"
        for name, imports in graph.items()
        for module in imports
        if floor(module) > floor(name)
    ]
    assert upward == []
    visiting, done = [], set()

    def visit(module):
        if module in visiting:
            raise AssertionError("import cycle: " + " -> ".join(visiting[visiting.index(module) :] + [module]))
        if module not in done:
            visiting.append(module)
            for imported in sorted(graph[module]):
                visit(imported)
            visiting.pop()
            done.add(module)

    for module in sorted(graph):
        visit(module)


def test_the_step_registry_is_what_the_steps_declare():
    """Each step's package declares its steps (config class and a run function, no module paths in strings); the
    command line assembles the registry from those declarations."""
    from spectrain.cli.steps import STEPS

    declared = {}
    for step in STEPS_FOLDERS:
        package = importlib.import_module(f"spectrain.components.{step}")
        declared |= {s.name: s for s in package.STEPS}
        for declaration in package.STEPS:
            assert declaration.config.__module__ == f"spectrain.components.{step}.config"
            assert declaration.run.__module__ == f"spectrain.components.{step}"
    assert STEPS == declared
    source = (ROOT / "spectrain" / "steps.py").read_text()
    assert "importlib" not in source and "components." not in source


def test_every_spectrain_environment_variable_is_in_the_configuration_table():
    import re

    page = (ROOT / "docs" / "configuration.md").read_text()
    table = page[page.index("## Environment variables") :]
    table = table.split("\n## ")[0]
    documented = set(re.findall(r"`(SPECTRAIN_[A-Z_<>]+)`", table))
    patterns = [re.compile(re.sub(r"<[A-Z]+>", "[A-Z]+", name) + "$") for name in documented]
    sources = [
        p
        for folder in ("spectrain", "components", "pipelines", "operations", "cli", "bench", "docker")
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and p.suffix in (".py", "") and "tests" not in p.parts
    ]
    used = {name for path in sources for name in re.findall(r"SPECTRAIN_[A-Z_]+", path.read_text(errors="ignore"))}
    missing = sorted(name for name in used if not any(p.match(name) or p.pattern.startswith(name) for p in patterns))
    assert not missing, f"add {missing} to the environment table of docs/configuration.md"


def test_one_module_owns_the_paths():
    """Work directory and caches are read in spectrain/paths.py only: moving one is a change in one place."""
    import re

    owner = ROOT / "spectrain" / "paths.py"
    reads = re.compile(
        r"(environ|getenv)\W[^\n]*SPECTRAIN_(HOME|MODEL_CACHE|DATA_CACHE|STATE_DIR)|Path\.home\(\)|\"~/\.cache"
    )
    readers = sorted(
        str(p.relative_to(ROOT))
        for folder in ("spectrain", "components", "pipelines", "operations", "cli")
        for p in (ROOT / folder).rglob("*.py")
        if "tests" not in p.parts and p != owner and reads.search(p.read_text())
    )
    assert readers == [], f"use spectrain.paths in {readers}"


@pytest.mark.parametrize("readme", sorted((ROOT / "components").glob("*/README.md")), ids=lambda p: p.parent.name)
def test_component_readme_opens_with_its_interface(readme):
    """Inputs, config, outputs and how to run the step alone come first, before any section or measurement."""
    opening = re.split(r"\n## |\nMeasured", readme.read_text())[0]
    missing = [label for label in ("Input", "Config", "Output", "Run alone") if f"\n- **{label}" not in opening]
    assert not missing, f"{readme.relative_to(ROOT)}: put {missing} in the opening list"
