"""BUILD stays honest: every module and test file has a target, and every target lists the
package modules its sources import at top level.

Bazel cannot fetch its rules here, so this test reads BUILD itself. BUILD is Starlark, whose
syntax is Python's: it is parsed with `ast` and evaluated with stand-ins for the rules
(`py_library`, `pytest_test`, `requirement`, `glob`, ...) that record each target's
name, sources and dependencies. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Folders whose Python files are modules that need a py_library target.
PACKAGES = ("apprentice_tf", "recipes", "benchmarks")
#: Top-level names whose imports are internal (checked against deps); the rest is third party.
INTERNAL = (*PACKAGES, "conftest")


@dataclasses.dataclass
class Target:
    rule: str
    name: str
    srcs: list[str]
    deps: list[str]
    main: str | None = None


def _read_build() -> dict[str, Target]:
    """The targets of BUILD, by name."""
    text = (ROOT / "BUILD").read_text()
    ast.parse(text, "BUILD")  # Starlark is Python syntax: a syntax error fails here
    targets: dict[str, Target] = {}

    def rule(kind):
        def record(name, srcs=(), deps=(), main=None, **_):
            assert name not in targets, f"BUILD: two targets are named {name!r}"
            targets[name] = Target(kind, name, list(srcs), list(deps), main)

        return record

    def glob(patterns, exclude=()):
        found = {str(p.relative_to(ROOT)) for pattern in patterns for p in ROOT.glob(pattern)}
        return sorted(found - {str(p.relative_to(ROOT)) for e in exclude for p in ROOT.glob(e)})

    namespace = {
        "__builtins__": {},
        "load": lambda *args, **kwargs: None,
        "package": lambda **kwargs: None,
        "licenses": lambda *args: None,
        "exports_files": lambda *args, **kwargs: None,
        "requirement": lambda name: f"@pypi//{name}",
        "glob": glob,
        "py_library": rule("py_library"),
        "py_binary": rule("py_binary"),
        "pytest_test": rule("pytest_test"),
    }
    exec(compile(text, "BUILD", "exec"), namespace)  # noqa: S102 - the repository's own BUILD
    return targets


def _modules() -> list[str]:
    """Every Python module of the packages, as a path relative to the repository root."""
    return sorted(
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def _test_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("*_test.py"))


def _module_file(dotted: str) -> str | None:
    """The file of an internal dotted module name (package __init__ or module), else None."""
    base = ROOT.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return str(candidate.relative_to(ROOT))
    if dotted == "conftest":
        return "tests/conftest.py"
    return None


def _top_level_statements(tree: ast.Module) -> list[ast.stmt]:
    """Module-level statements, looking into if/try blocks but not `if TYPE_CHECKING:`."""
    statements, stack = [], list(tree.body)
    while stack:
        node = stack.pop(0)
        if isinstance(node, ast.If):
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                continue
            stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                stack.extend(handler.body)
        else:
            statements.append(node)
    return statements


def internal_imports(path: str, everywhere: bool = False) -> set[str]:
    """Files of the internal modules `path` imports at top level (`everywhere`: in functions
    too, as tests do)."""
    tree = ast.parse((ROOT / path).read_text(), path)
    package = ".".join(Path(path).parent.parts)
    found: set[str] = set()
    nodes = ast.walk(tree) if everywhere else _top_level_statements(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            # `from P import n`: n is a submodule of P, or a name defined in P.
            names = [
                f"{module}.{a.name}" if _module_file(f"{module}.{a.name}") else module
                for a in node.names
            ]
        else:
            continue
        for name in names:
            if name.split(".")[0] in INTERNAL:
                file = _module_file(name)
                if file is not None and file != path:
                    found.add(file)
    return found


BUILD = _read_build()
OWNER = {src: target for target in BUILD.values() for src in target.srcs}


def test_every_module_has_a_library_target():
    missing = [m for m in _modules() if m not in OWNER or OWNER[m].rule != "py_library"]
    assert not missing, f"modules without a py_library target in BUILD: {missing}"


def test_every_test_file_has_a_test_target_that_runs_it():
    tests = {t.srcs[0]: t for t in BUILD.values() if t.rule == "pytest_test" and t.srcs}
    missing = [f for f in _test_files() if f not in tests]
    assert not missing, f"test files without a pytest_test target in BUILD: {missing}"
    for target in tests.values():
        assert target.name == Path(target.srcs[0]).stem, target
        assert len(target.srcs) == 1, f"{target.name}: one test file per target"


def test_every_source_in_build_exists():
    stale = [s for t in BUILD.values() for s in t.srcs if not (ROOT / s).is_file()]
    assert not stale, f"BUILD lists sources that do not exist: {stale}"


def test_internal_deps_name_existing_targets():
    unknown = {
        (t.name, d)
        for t in BUILD.values()
        for d in t.deps
        if d.startswith(":") and d[1:] not in BUILD
    }
    assert not unknown, f"deps naming no target: {sorted(unknown)}"


@pytest.mark.parametrize("path", [*_modules(), *_test_files()])
def test_internal_imports_are_in_the_targets_deps(path):
    """A module's top-level imports (package modules import nothing inside functions), and
    every import of a test file, name targets in the deps of the file's own target."""
    target = OWNER.get(path)
    if target is None:
        pytest.skip(f"{path} has no target (reported by the tests above)")
    deps = {d[1:] for d in target.deps if d.startswith(":")}
    missing = sorted(
        OWNER[file].name if file in OWNER else f"<no target for {file}>"
        for file in internal_imports(path, everywhere=path.startswith("tests/"))
        if OWNER.get(file) is not target and (file not in OWNER or OWNER[file].name not in deps)
    )
    assert not missing, f"{path} imports {missing}, missing from the deps of :{target.name}"


def test_the_import_reader_sees_relative_and_submodule_imports():
    hakd = internal_imports("recipes/hakd.py")
    assert {"recipes/_common.py", "apprentice_tf/hardware/__init__.py"} <= hakd
    assert "apprentice_tf/models/families.py" in hakd  # `from apprentice_tf.models import ...`
