"""The import shim: ``import mamba_ssm…`` and ``import causal_conv1d…`` resolve to ``mambakit.compat``.

``install()`` puts a finder first on ``sys.meta_path``. For each shimmed package, the module paths that
scripts import (``SHIMMED_MODULES``) become aliases of the mambakit modules of the same path: the very
same module objects, so ``mamba_ssm.Mamba is mambakit.compat.Mamba``. Other paths under a shimmed
package raise ``ModuleNotFoundError`` naming what is supported (the ``try: import … except ImportError``
fallbacks that research code uses keep working). A real mamba_ssm or causal_conv1d found on ``sys.path``
is never shadowed unless ``install(force=True)``.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings

MAMBA_SSM_MODULES = (
    "", ".models", ".models.mixer_seq_simple", ".models.config_mamba", ".modules", ".modules.mamba_simple",
    ".modules.mamba2", ".ops", ".ops.selective_scan_interface", ".ops.triton", ".ops.triton.ssd_combined",
    ".ops.triton.selective_state_update", ".utils", ".utils.generation", ".utils.hf",
)
# module path a script imports -> the mambakit module it gets
SHIMMED_MODULES: dict[str, str] = {
    **{"mamba_ssm" + path: "mambakit.compat" + path for path in MAMBA_SSM_MODULES},
    "causal_conv1d": "mambakit.compat.causal_conv1d",
    "causal_conv1d.causal_conv1d_interface": "mambakit.compat.causal_conv1d",
}
PACKAGES = ("mamba_ssm", "causal_conv1d")


class _AliasLoader(importlib.abc.Loader):
    """Hands out an already imported mambakit module under the shimmed name."""

    def __init__(self, module):
        self.module, self.own_spec = module, module.__spec__

    def create_module(self, spec):
        return self.module

    def exec_module(self, module):
        module.__spec__ = self.own_spec  # the import system stamped the alias spec on the shared module


class ShimFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of ``packages`` (a subset of PACKAGES) in mambakit.compat."""

    def __init__(self, packages: tuple[str, ...]):
        self.packages = packages

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] not in self.packages:
            return None
        if fullname not in SHIMMED_MODULES:
            supported = ", ".join(name for name in SHIMMED_MODULES if name.startswith(fullname.split(".")[0]))
            raise ModuleNotFoundError(f"No module named {fullname!r}: mambakit's drop-in provides only {supported}",
                                      name=fullname)
        module = importlib.import_module(SHIMMED_MODULES[fullname])
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(module), is_package=hasattr(module, "__path__"))


def real_package_location(name: str) -> str | None:
    """Where a real (pip-installed) ``name`` would be imported from, else None; never consults the shim."""
    spec = importlib.machinery.PathFinder.find_spec(name)
    if spec is None:
        return None
    return spec.origin or ", ".join(spec.submodule_search_locations or [])


def install(force: bool = False) -> tuple[str, ...]:
    """Make ``import mamba_ssm…`` / ``import causal_conv1d…`` resolve to mambakit; returns the shimmed packages.

    A package that is really installed keeps resolving to itself (with a warning) unless ``force=True``,
    which also drops any of its modules already imported. Calling it again replaces the earlier finder.
    """
    uninstall()
    packages = []
    for package in PACKAGES:
        location = real_package_location(package)
        if location is not None and not force:
            warnings.warn(f"a real {package} is installed ({location}); it is used instead of mambakit's drop-in "
                          f"(mambakit.compat.install(force=True) or `python -m mambakit.compat --force` overrides)",
                          stacklevel=2)
            continue
        _forget_modules(package)
        packages.append(package)
    if packages:
        sys.meta_path.insert(0, ShimFinder(tuple(packages)))
    return tuple(packages)


def uninstall() -> None:
    """Remove the finder and the shimmed module names (mambakit's own modules stay imported)."""
    for finder in [f for f in sys.meta_path if isinstance(f, ShimFinder)]:
        sys.meta_path.remove(finder)
        for package in finder.packages:
            _forget_modules(package)


def _forget_modules(package: str) -> None:
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]
