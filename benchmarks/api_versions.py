"""fa_cute's Python layer as of a commit (or as in this tree), loaded from source beside the
installed package, for host-time comparisons on a machine without a GPU
(benchmarks/host_cpu.py, benchmarks/cache_hit_cpu.py).

A version's modules (python/fa_cute/*.py at that commit) run as a package of their own,
`fa_cute_<tag>`, sharing the built `fa_cute._C`. Their source is read with `.is_cuda` as
`.is_cpu` (an attribute of the same cost) so that CPU tensors take the cached paths, and
without the custom ops (the installed package has registered their names; eager calls do
not use them). The device check, the kernel launch and auto's GPU queries are replaced by
stand-ins, the GPU queries memoized as the real ones are.

Before issue 15 all of this lived in `_api.py` under underscore names; `ROLES` says where
each layout keeps what the stand-ins replace and what the benchmarks call.
"""
import functools
import importlib
import importlib.abc
import importlib.util
import pathlib
import re
import subprocess
import sys
import types
from typing import Dict, Optional

import fa_cute

__all__ = ["ROLES", "Version"]

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE_DIR = "python/fa_cute"

# Each role's (module, name) in this tree's layout, then in the layout before issue 15:
# where the calls look it up, so where a stand-in must go.
ROLES = {
    "check_devices": [("_validate", "check_devices"), ("_api", "_check_devices")],
    "launch": [("_api", "launch_kernel"), ("_api", "_launch")],
    "gpu": [("_configs", "gpu_of"), ("_api", "_gpu")],
    "smem_limit": [("_configs", "smem_limit_of"), ("_api", "_smem_limit")],
    "validate_cached": [("_cache", "validate_cached"), ("_api", "_validate_cached")],
    "validated": [("_cache", "VALIDATED"), ("_api", "_VALIDATED")],
}

# The custom ops' registration, in either layout: the ops dict stays empty.
_REGISTER_OPS = re.compile(r"^(_?OPS: Dict\[str, object\] = )_register_ops\(\)$", re.M)


def _sources(commit: Optional[str]) -> Dict[str, str]:
    """{module name: source} of the package's modules at commit (None: this tree)."""
    if commit is None:
        return {p.stem: p.read_text() for p in (ROOT / PACKAGE_DIR).glob("*.py")}
    paths = subprocess.check_output(["git", "-C", str(ROOT), "ls-tree", "--name-only", commit,
                                     PACKAGE_DIR + "/"], text=True).split()
    return {pathlib.PurePath(p).stem: subprocess.check_output(
                ["git", "-C", str(ROOT), "show", f"{commit}:{p}"], text=True)
            for p in paths if p.endswith(".py")}


class _Loader(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves `<package>.<module>` from a version's rewritten sources."""

    def __init__(self, package: str, sources: Dict[str, str]) -> None:
        self.package, self.sources = package, sources

    def find_spec(self, fullname, path=None, target=None):
        parent, _, name = fullname.rpartition(".")
        if parent == self.package and name in self.sources:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__.rpartition(".")[2]
        module.__file__ = str(ROOT / PACKAGE_DIR / f"{name}.py")
        exec(compile(self.sources[name], f"<{module.__name__}>", "exec"), module.__dict__)


class _KernelStub(types.ModuleType):
    """`fa_cute._C` with its kernel launches (forward, backward, kvcache_forward) as no-ops
    and no split-KV, for CPU tensors."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__spec__ = importlib.util.spec_from_loader(name, loader=None)

    def __getattr__(self, name: str):
        if name in ("forward", "backward", "kvcache_forward"):
            return lambda *args, **kwargs: 0.0
        if name == "num_splits":  # no GPU to ask: no split (a prefill's answer)
            return lambda *args, **kwargs: 1
        return getattr(fa_cute._C, name)


class Version:
    """One version of the Python layer, loaded with the stand-ins in place."""

    def __init__(self, commit: Optional[str], tag: str, real_launch: bool = False) -> None:
        """real_launch: keep the launch's Python (arguments, work buffers, stream) and stand in
        for `_C`'s kernel entry points instead (`_KernelStub`)."""
        self.package = f"fa_cute_{tag}"
        sources = {name: _REGISTER_OPS.sub(r"\1{}", src.replace(".is_cuda", ".is_cpu"))
                   for name, src in _sources(commit).items() if name != "__init__"}
        package = types.ModuleType(self.package)
        package.__path__ = []
        package._C = _KernelStub(f"{self.package}._C") if real_launch else fa_cute._C
        sys.modules[self.package] = package
        sys.modules[f"{self.package}._C"] = package._C
        sys.meta_path.insert(0, _Loader(self.package, sources))
        self.api = importlib.import_module(f"{self.package}._api")
        self.set("check_devices", lambda *args, **kwargs: None)
        if real_launch:
            # CPU tensors have device index None, which is then "the current device".
            launch = sys.modules[f"{self.package}._launch"]
            launch._raw_current_stream = lambda index: 0
        else:
            self.set("launch", lambda *args, **kwargs: 0.0)
        self.set("gpu", functools.lru_cache(None)(lambda index: ("fake GPU", (8, 0))))
        self.set("smem_limit", functools.lru_cache(None)(lambda index: None))
        # Modules that imported a stand-in's original by name (the backward's) get it too.
        for module_name, module in list(sys.modules.items()):
            if module_name.startswith(self.package + "."):
                for role in ("gpu", "smem_limit", "check_devices"):
                    _, name = self._where(role)
                    if hasattr(module, name):
                        setattr(module, name, self.get(role))

    def _where(self, role: str):
        for module, name in ROLES[role]:
            found = sys.modules.get(f"{self.package}.{module}")
            if found is not None and hasattr(found, name):
                return found, name
        raise LookupError(f"{self.package}: no {role} ({ROLES[role]})")

    def get(self, role: str):
        module, name = self._where(role)
        return getattr(module, name)

    def set(self, role: str, value) -> None:
        module, name = self._where(role)
        setattr(module, name, value)
