"""Two source trees of this project in one process: import each once under the project's own module names,
then swap a tree's modules into ``sys.modules`` before each of its runs (``bench_trees.py``,
``bench_watermark.py``). Runs of the trees can then alternate in one process, on one machine state. Also the
benchmarks' way to import a helper of a tree's ``tests/`` (:func:`load_tests_module`)."""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys
from types import ModuleType

PACKAGES = ("actors", "protocol", "message_queue", "service")
ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_tests_module(name: str, root: pathlib.Path = ROOT) -> ModuleType:
    """``tests/<name>.py`` of the tree at ``root`` (the tests directory is not a package), imported by path and
    put in ``sys.modules`` as ``name``, so that the other helpers of ``tests/`` that import it find it."""
    spec = importlib.util.spec_from_file_location(name, root / "tests" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class SourceTree:
    """The modules of one tree: the project's packages and the benchmark modules named in ``bench_modules``,
    as imported from ``root`` by importing ``entry_modules``."""

    def __init__(self, root: pathlib.Path, entry_modules: tuple[str, ...], bench_modules: tuple[str, ...]) -> None:
        self.root = root
        self._bench_modules = bench_modules
        self._drop()
        saved = list(sys.path)
        sys.path[:0] = [str(root), str(root / "bench")]
        try:
            for name in entry_modules:
                importlib.import_module(name)
        finally:
            sys.path[:] = saved
        self.modules = {n: m for n, m in sys.modules.items() if self._ours(n)}
        strays = [n for n, m in self.modules.items()
                  if not str(getattr(m, "__file__", None) or root).startswith(str(root))]
        if strays:
            raise RuntimeError(f"modules of another tree were imported for {root}: {sorted(strays)}")

    def activate(self) -> dict[str, ModuleType]:
        """Put this tree's modules in ``sys.modules`` (those of any other tree out); return them."""
        self._drop()
        sys.modules.update(self.modules)
        return self.modules

    def _ours(self, name: str) -> bool:
        return name.split(".")[0] in PACKAGES + self._bench_modules

    def _drop(self) -> None:
        for name in [n for n in sys.modules if self._ours(n)]:
            del sys.modules[name]
