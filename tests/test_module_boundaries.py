"""Module boundaries (issue 15): no module of the package, the tests or the benchmarks uses
another fa_cute module's private (underscore) names, and every name one module takes from a
private module (`_configs`, `_validate`, ...) is listed in the `__all__` of the module that
defines it. Private modules themselves may be imported; `_C` is the extension module.

Read from the source with `ast`, so the check covers GPU tests and scripts that cannot run
here: imports (`from fa_cute._x import name`, relative ones inside the package), attribute
reads on names bound to fa_cute modules (`_x.name`, `fa_cute._x.name`), and the names that
setattr, getattr and monkeypatch.setattr take as strings.
"""

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "python" / "fa_cute"
PACKAGE = "fa_cute"
SUBMODULES = {p.stem for p in PACKAGE_DIR.glob("*.py")} - {"__init__"} | {"_C"}

# Calls that name an attribute of their first argument by a string: setattr(m, "name", ...),
# monkeypatch.setattr(m, "name", ...).
ATTRIBUTE_CALLS = {"setattr", "getattr", "hasattr", "delattr"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_path(module: str) -> Optional[Path]:
    """The source of an fa_cute module ("fa_cute" or "fa_cute._x"); None for `_C`."""
    if module == PACKAGE:
        return PACKAGE_DIR / "__init__.py"
    path = PACKAGE_DIR / (module.split(".", 1)[1] + ".py")
    return path if path.exists() else None


def _imports_of(tree: ast.Module, module: str) -> Dict[str, str]:
    """The names a module binds at its top level with `from ... import`, to the module each
    comes from."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            source = _absolute(node, module)
            if source is not None:
                for alias in node.names:
                    found[alias.asname or alias.name] = source
    return found


def _absolute(node: ast.ImportFrom, module: str) -> Optional[str]:
    """The fa_cute module a `from X import ...` reads, made absolute; None for any other."""
    if node.level:
        base = module if module == PACKAGE else module.rsplit(".", 1)[0]
        name = base + ("." + node.module if node.module else "")
    else:
        name = node.module or ""
    return name if name == PACKAGE or name.startswith(PACKAGE + ".") else None


_TREES: Dict[str, Optional[ast.Module]] = {}


def _tree(module: str) -> Optional[ast.Module]:
    if module not in _TREES:
        path = _module_path(module)
        _TREES[module] = ast.parse(path.read_text()) if path else None
    return _TREES[module]


def _exported(tree: ast.Module) -> Optional[Set[str]]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return None


def _unlisted(module: str, name: str) -> Optional[str]:
    """Why `module.name` is not a public name of the module that defines it, or None.

    A name a module imports from another is followed there; names of public modules (the
    package, bench, tune, ...) that define no `__all__` need no listing."""
    seen = set()
    while module not in seen:
        seen.add(module)
        tree = _tree(module)
        if tree is None or name in SUBMODULES and module == PACKAGE:
            return None
        source = _imports_of(tree, module).get(name)
        if source is not None:
            if source == PACKAGE and name in SUBMODULES:
                return None
            module = source
            continue
        exported = _exported(tree)
        if exported is None:
            return (f"{module} has no __all__" if _private(module.rsplit(".", 1)[-1])
                    else None)
        return None if name in exported else f"{name!r} is not in {module}.__all__"
    return None


def _bindings(tree: ast.Module, module: str) -> Dict[str, str]:
    """Local names bound to fa_cute modules anywhere in a file (fixtures import inside
    functions), to the module's full name."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    bound[alias.asname or PACKAGE] = alias.name if alias.asname else PACKAGE
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, module)
            if source == PACKAGE:
                for alias in node.names:
                    if alias.name in SUBMODULES:
                        bound[alias.asname or alias.name] = f"{PACKAGE}.{alias.name}"
    return bound


def _resolve(node: ast.expr, bound: Dict[str, str]) -> Optional[str]:
    """The fa_cute module an expression names, or None."""
    if isinstance(node, ast.Name):
        return bound.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, bound)
        if base == PACKAGE and node.attr in SUBMODULES:
            return f"{PACKAGE}.{node.attr}"
    return None


def violations(source: str, module: str = "test") -> Iterator[str]:
    """What a file's source takes from other fa_cute modules that it should not; module is
    its own name ("fa_cute._x" inside the package, for relative imports)."""
    tree = ast.parse(source)
    bound = _bindings(tree, module)

    def use(line: int, owner: str, name: str, listed: bool = True) -> Iterator[str]:
        if name in SUBMODULES and owner == PACKAGE or name == "_C" or name.startswith("__"):
            return
        if _private(name):
            yield f"line {line}: {owner}.{name} is private"
        elif listed:
            why = _unlisted(owner, name)
            if why:
                yield f"line {line}: {owner}.{name}: {why}"

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(node, module)
            if source is not None:
                for alias in node.names:
                    yield from use(node.lineno, source, alias.name)
        elif isinstance(node, ast.Attribute):
            owner = _resolve(node.value, bound)
            if owner is not None:
                yield from use(node.lineno, owner, node.attr)
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            name = node.args[1]
            owner = _resolve(node.args[0], bound)
            if (called in ATTRIBUTE_CALLS and owner is not None
                    and isinstance(name, ast.Constant) and isinstance(name.value, str)):
                # Replacing a module's binding patches where it is looked up: the name
                # may come from another module, so only its privacy is checked.
                yield from use(node.lineno, owner, name.value, listed=False)


def _files() -> List[Path]:
    return sorted([*PACKAGE_DIR.glob("*.py"), *(ROOT / "tests").glob("*.py"),
                   *(ROOT / "benchmarks").glob("*.py")])


def _module_name(path: Path) -> str:
    if path.parent == PACKAGE_DIR:
        return PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"
    return path.stem


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_uses_another_modules_private_names(path: Path) -> None:
    found = list(violations(path.read_text(), _module_name(path)))
    assert not found, f"{path.relative_to(ROOT)}:\n" + "\n".join(found)


def test_private_modules_list_their_public_names() -> None:
    for path in PACKAGE_DIR.glob("_*.py"):
        if path.stem != "__init__":
            assert _exported(ast.parse(path.read_text())) is not None, f"{path.name}: no __all__"


@pytest.mark.parametrize("source, expected", [
    ("from fa_cute._cache import _remember", "fa_cute._cache._remember is private"),
    ("from fa_cute import _cache\n_cache._remember(1, 2)", "fa_cute._cache._remember is private"),
    ("import fa_cute\nfa_cute._cache.PLANS.clear()\nfa_cute._launch._num_splits",
     "fa_cute._launch._num_splits is private"),
    ("import fa_cute._cache as c\nc._SEQLEN_K", "fa_cute._cache._SEQLEN_K is private"),
    ("def f(monkeypatch):\n    from fa_cute import _validate\n"
     "    monkeypatch.setattr(_validate, '_check_layout', None)",
     "fa_cute._validate._check_layout is private"),
    ("from fa_cute._listed import unlisted", "'unlisted' is not in fa_cute._listed.__all__"),
    ("import fa_cute._listed as listed\nlisted.unlisted", "not in fa_cute._listed.__all__"),
    ("from fa_cute._listed import passed_on", "'passed_on' is not in fa_cute._validate.__all__"),
    ("from fa_cute._unlisted import x", "fa_cute._unlisted has no __all__"),
])
def test_the_check_finds_each_kind_of_use(fake_modules, source: str, expected: str) -> None:
    found = list(violations(source))
    assert len(found) == 1 and expected in found[0], found


def test_the_check_allows_public_names_modules_and_c(fake_modules) -> None:
    source = ("import fa_cute\nfrom fa_cute import _C, _cache, _launch\n"
              "from fa_cute._configs import CONFIGS, configs\n"
              "from fa_cute._listed import listed, row_strides\n"
              "fa_cute._C.limits(); fa_cute._cache.PLANS; _launch.launch_kernel\n"
              "fa_cute.forward; fa_cute.configs; fa_cute.__version__; _cache.__dict__\n"
              "def f(monkeypatch):\n    monkeypatch.setattr(fa_cute._api, 'launch_kernel', None)\n")
    assert list(violations(source)) == []


@pytest.fixture
def fake_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two private modules for the check to read: one listing a name and passing on another
    module's (which stays that module's to list), one without __all__."""
    monkeypatch.setitem(_TREES, "fa_cute._listed", ast.parse(
        "from ._launch import row_strides\nfrom ._validate import passed_on\n"
        "__all__ = ['listed']\nlisted = unlisted = 1\n"))
    monkeypatch.setitem(_TREES, "fa_cute._unlisted", ast.parse("x = 1\n"))
