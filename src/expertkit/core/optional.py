"""Importing optional packages (the extras) with an error that tells absent from installed-but-broken.

``except ImportError: "not installed"`` is wrong whenever the package is there and one of *its* imports fails: lxml
5.2+ moved ``lxml.html.clean`` out into lxml_html_clean, and trafilatura then fails to import on a fresh install
(issue 11). `import_optional` looks at what failed before it says which::

    trafilatura = import_optional("trafilatura", "trafilatura", "rag")
    # absent: "trafilatura is not installed"  (hint: pip install 'expertkit[rag]')
    # broken: "trafilatura 2.3.1 is installed but could not be imported: ImportError: lxml.html.clean module is now
    #          a separate project lxml_html_clean. ..."  (hint: pip install --upgrade 'expertkit[rag]'; ...)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from expertkit.core.errors import BrokenExtraError, MissingExtraError


def import_optional(module: str, package: str, extra: str | None, *, needed_for: str = "") -> ModuleType:
    """`module` imported, or a `MissingExtraError` (the package is absent) or a `BrokenExtraError` (it is installed
    but its import fails; the message carries the real error).

    `package` is the name pip installs (``python-docx`` for ``docx``), `extra` the expertkit extra that brings it
    (None: none does, the hint is ``pip install PACKAGE``), `needed_for` what needs it, starting the message.
    """
    try:
        return importlib.import_module(module)
    except Exception as e:  # a broken install fails in many ways: ImportError, OSError from a .so, AttributeError
        if _absent(e, module):
            raise MissingExtraError(package, extra, needed_for) from None
        raise BrokenExtraError(
            package, extra, _error_text(e), needed_for, version=_version(package), lacks=_lacks(e, module)
        ) from e


def _absent(e: Exception, module: str) -> bool:
    """True when the failed import is `module` itself (or a package above it) and there is nothing to import:
    not on sys.path, or blocked with ``sys.modules[name] = None`` (how tests hide a package)."""
    if not isinstance(e, ModuleNotFoundError) or e.name not in _ancestors(module):
        return False
    if e.name in sys.modules and sys.modules[e.name] is None:
        return True
    try:
        return importlib.util.find_spec(module.partition(".")[0]) is None
    except (ImportError, ValueError):  # ValueError: in sys.modules without a spec, so it is there
        return False


def _lacks(e: BaseException, module: str) -> str:
    """The top-level module of another package that the failed import names as missing, if any: the package's
    own dependency. Follows the chain, since `raise ImportError(...) from None` still keeps the cause it hides."""
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ModuleNotFoundError) and current.name:
            top = current.name.partition(".")[0]
            if top != module.partition(".")[0]:
                return top
        current = current.__cause__ or current.__context__
    return ""


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _error_text(e: Exception) -> str:
    text = " ".join(str(e).split())  # lxml's message spans two lines; the CLI prints one
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version  # only on the error path

    try:
        return version(package)
    except (PackageNotFoundError, ValueError):
        return ""
