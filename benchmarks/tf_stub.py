"""Permissive stand-ins for ``tensorflow`` and ``keras``, so that thingsvision's PyTorch path imports without them.

thingsvision 2.7.3 imports TensorFlow at import time even for PyTorch models (its Keras extractor,
its TF dataset code and a ``tf.config.list_physical_devices("GPU")`` call at module level), and
TensorFlow cannot go to the GPU machine (no registry there, and its wheels alone exceed the 64 MiB
that may travel). :func:`install` puts a meta-path finder first on ``sys.meta_path`` that answers
every ``tensorflow*`` / ``keras*`` import with a dummy module:

* any attribute is another dummy (``tf.keras.layers.Lambda``, ``tf.config.experimental``, ...);
* calling one returns itself; it is falsy, empty and iterable (``gpus = tf.config.list_physical_devices
  ("GPU"); if gpus: ...`` does nothing), and usable as a base class (``__mro_entries__`` -> ``object``).

Nothing of thingsvision's PyTorch path computes with TensorFlow; the benchmark checks that its
features equal neuroprobe's post-activation capture on the same images, so a stand-in that were
silently used would show there. :func:`touched` lists the stand-in modules that were imported.

Usage (before importing thingsvision)::

    import tf_stub; tf_stub.install()
    import thingsvision
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

PREFIXES = ("tensorflow", "keras", "tf_keras")


class StubModule(types.ModuleType):
    """A module whose every attribute is another stub module; callable, falsy, empty, subclassable."""

    __path__: list[str] = []
    __stub__ = True

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _module(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        return self

    def __bool__(self) -> bool:
        return False

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0

    def __mro_entries__(self, bases):
        return (object,)

    def __repr__(self) -> str:
        return f"<stub module {self.__name__!r}>"


def _module(name: str) -> StubModule:
    module = sys.modules.get(name)
    if module is None:
        module = StubModule(name)
        module.__file__ = "<tf_stub>"
        module.__spec__ = importlib.machinery.ModuleSpec(name, _Finder, is_package=True)
        module.__version__ = "0.0.0+stub"
        sys.modules[name] = module
    return module


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in PREFIXES:
            return importlib.machinery.ModuleSpec(name, cls, is_package=True)
        return None

    @classmethod
    def create_module(cls, spec):
        return _module(spec.name)

    @classmethod
    def exec_module(cls, module) -> None:
        module.__path__ = []


def install() -> None:
    """Answer every later ``tensorflow*`` / ``keras*`` import with a stub (idempotent)."""
    real = [name for name in sys.modules if name.split(".")[0] in PREFIXES
            and not getattr(sys.modules[name], "__stub__", False)]
    if real:
        raise RuntimeError(f"tf_stub.install(): the real {real[0]} is already imported")
    if _Finder not in sys.meta_path:
        sys.meta_path.insert(0, _Finder)


def touched() -> list[str]:
    """The stub modules imported so far."""
    return sorted(name for name, module in sys.modules.items() if getattr(module, "__stub__", False))
