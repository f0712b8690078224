"""The package's layers: no upward import, no package import inside a function.

Read with `ast`, without importing anything. Layers, bottom to top (a module may import the
modules of lower layers, and the modules listed before it in its own layer):

    0  _checks, _io, compat, _graph, precision
    1  reporting, quantizers, losses, data, models (package)
    2  zoo, quantize_configs
    3  quantize, distiller, caching, progressive, pruning
    4  saving        (knows every serialisable class, so it sits above all of them)
    5  litert, tflite (tflite loads export copies inside saving's quantize_scope)
    6  hardware      (package)
    7  cli

`reporting` (markdown tables and matplotlib figures) imports only `_io`, so that every layer
above it, `hardware`'s sweep plot included, can draw with it.

`_checks` and `_io` sit first because they import neither TensorFlow nor Keras: `litert` and
`cli` use them, and `apprentice-tf inspect` must start without TensorFlow. The lazy loader of
``apprentice_tf/__init__.py`` (PEP 562) is the one place that imports package modules inside a
function.

Recipes import only apprentice_tf's public names (no ``apprentice_tf._x`` module, no ``_x``
name from an apprentice_tf module); benchmarks import neither ``recipes._common`` nor a private
name of a recipe or of the package.
"""

from __future__ import annotations

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "apprentice_tf"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("_checks", "_io", "compat", "_graph", "precision"),
    ("reporting", "quantizers", "losses", "data", "models"),
    ("zoo", "quantize_configs"),
    ("quantize", "distiller", "caching", "progressive", "pruning"),
    ("saving",),
    ("litert", "tflite"),
    ("hardware",),
    ("cli",),
)
#: Rank of every top-level module: (layer, position in the layer).
RANK = {name: (layer, i) for layer, names in enumerate(LAYERS) for i, name in enumerate(names)}


def _top_module(path: pathlib.Path) -> str:
    """``apprentice_tf/models/resnet.py`` -> ``models``, ``apprentice_tf/cli.py`` -> ``cli``."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _package_modules() -> list[pathlib.Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE
    )


def _imports(tree: ast.AST) -> list[tuple[ast.AST, str, list[str], bool]]:
    """(node, imported module, imported names, inside a function) for every import."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append((child, alias.name, [], inside))
            elif isinstance(child, ast.ImportFrom):
                module = child.module or ""
                if child.level:  # relative: resolved by the caller from the file's package
                    module = "." * child.level + module
                found.append((child, module, [a.name for a in child.names], inside))
            visit(child, inside)

    visit(tree, False)
    return found


def _targets(module: str, names: list[str], path: pathlib.Path) -> list[str]:
    """The apprentice_tf top-level modules an import statement reaches."""
    if module.startswith("."):
        package = path.relative_to(REPO).parent.parts
        level = len(module) - len(module.lstrip("."))
        base = list(package[: len(package) - level + 1])
        rest = module.lstrip(".")
        module = ".".join(base + ([rest] if rest else []))
    parts = module.split(".")
    if parts[0] != "apprentice_tf":
        return []
    if len(parts) > 1:
        return [parts[1]]
    return [name for name in names if name in RANK or name.startswith("_")]


def _typing_only(tree: ast.AST) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:``."""
    hidden = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden |= {id(n) for n in ast.walk(node)}
    return hidden


def test_every_module_has_a_layer():
    modules = {_top_module(p) for p in _package_modules()}
    assert modules <= set(RANK), f"modules without a layer: {sorted(modules - set(RANK))}"


def test_no_upward_or_sideways_import():
    wrong = []
    for path in _package_modules():
        source = _top_module(path)
        tree = ast.parse(path.read_text(), str(path))
        hidden = _typing_only(tree)
        for node, module, names, _ in _imports(tree):
            if id(node) in hidden:
                continue
            for target in _targets(module, names, path):
                if target == source:
                    continue  # inside a package (models/, hardware/)
                if target not in RANK or RANK[target] >= RANK[source]:
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno} imports {target}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def _function_level(paths: list[pathlib.Path]) -> list[str]:
    wrong = []
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        for node, module, names, inside in _imports(tree):
            if inside and _targets(module, names, path):
                wrong.append(f"{path.relative_to(REPO)}:{node.lineno} imports {module}")
    return wrong


def test_no_package_import_inside_a_function():
    wrong = _function_level(_package_modules())
    assert not wrong, "package modules imported inside functions:\n" + "\n".join(wrong)


def test_the_lazy_loader_is_the_only_function_level_import():
    """``apprentice_tf/__init__.py`` imports submodules in `__getattr__` only (PEP 562), so that
    ``import apprentice_tf`` stays free of TensorFlow."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    hidden = _typing_only(tree)
    eager = [
        module
        for node, module, names, inside in _imports(tree)
        if not inside and id(node) not in hidden and _targets(module, names, PACKAGE / "x.py")
    ]
    assert not eager


def _private_imports(folder: str, forbidden: callable, roots: tuple[str, ...]) -> list[str]:
    """Forbidden imports, and ``alias._name`` uses of a module imported from `roots`."""
    wrong = []
    for path in sorted((REPO / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        aliases = set()
        for node, module, names, _ in _imports(tree):
            for reason in forbidden(path, module, names):
                wrong.append(f"{path.relative_to(REPO)}:{node.lineno} {reason}")
            if module.split(".")[0] in roots:
                for alias in node.names:
                    aliases.add(alias.asname or alias.name.split(".")[0])
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            if node.attr.startswith("__"):
                continue
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in aliases:
                wrong.append(
                    f"{path.relative_to(REPO)}:{node.lineno} uses private {ast.unparse(node)}"
                )
    return wrong


def _private_package_names(module: str, names: list[str]) -> list[str]:
    if not module.startswith("apprentice_tf"):
        return []
    parts = module.split(".")
    reasons = [f"imports private module {module}" for p in parts[1:] if p.startswith("_")]
    if not reasons:
        reasons = [f"imports private {module}.{n}" for n in names if n.startswith("_")]
    return reasons


def _recipes_forbidden(path: pathlib.Path, module: str, names: list[str]) -> list[str]:
    return _private_package_names(module, names)


def _benchmarks_forbidden(path: pathlib.Path, module: str, names: list[str]) -> list[str]:
    reasons = _private_package_names(module, names)
    if module.startswith("recipes"):
        parts = module.split(".")
        if any(p.startswith("_") for p in parts):
            reasons.append(f"imports {module}")
        reasons += [f"imports private {module}.{n}" for n in names if n.startswith("_")]
    return reasons


def test_recipes_use_public_names_only():
    wrong = _private_imports("recipes", _recipes_forbidden, ("apprentice_tf",))
    assert not wrong, "recipes use private names:\n" + "\n".join(wrong)


def test_benchmarks_use_public_names_only():
    wrong = _private_imports("benchmarks", _benchmarks_forbidden, ("apprentice_tf", "recipes"))
    assert not wrong, "benchmarks use private names:\n" + "\n".join(wrong)


def test_the_checker_sees_a_violation(tmp_path):
    """The rules are not vacuous: an upward and a function-level import are both found."""
    tree = ast.parse(
        "from apprentice_tf import tflite\n"
        "def f():\n"
        "    from apprentice_tf.saving import quantize_scope\n"
    )
    found = [(_targets(m, n, PACKAGE / "losses.py"), inside) for _, m, n, inside in _imports(tree)]
    assert found == [(["tflite"], False), (["saving"], True)]
    assert RANK["tflite"] > RANK["losses"]
