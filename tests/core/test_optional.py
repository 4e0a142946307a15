"""import_optional tells "not installed" from "installed, but its import fails" (issue 11: trafilatura under lxml 6)."""

from __future__ import annotations

import sys

import pytest

from expertkit.core.errors import BrokenExtraError, ExpertkitError, MissingExtraError
from expertkit.core.optional import import_optional

LXML_6 = "lxml.html.clean module is now a separate project lxml_html_clean"


def put_package(monkeypatch, root, name: str, init: str) -> None:
    """A package `name` on sys.path whose __init__.py is `init`; it is forgotten after the test."""
    (root / name).mkdir()
    (root / name / "__init__.py").write_text(init, encoding="utf-8")
    monkeypatch.syspath_prepend(str(root))  # also invalidates the import caches
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, module)


def test_an_absent_package_is_not_installed_and_names_the_extra():
    with pytest.raises(MissingExtraError) as e:
        import_optional("expertkit_test_absent", "expertkit-test-absent", "rag")
    assert e.value.message == "expertkit-test-absent is not installed"
    assert e.value.hint == "pip install 'expertkit[rag]'"


def test_a_package_whose_import_fails_is_installed_but_broken_with_the_real_error(tmp_path, monkeypatch):
    put_package(monkeypatch, tmp_path, "ek_lxml6_victim", f"raise ImportError({LXML_6!r})\n")
    with pytest.raises(BrokenExtraError) as e:
        import_optional("ek_lxml6_victim", "ek-lxml6-victim", "rag")
    text = str(e.value)
    assert f"ek-lxml6-victim is installed but could not be imported: ImportError: {LXML_6}" in text
    assert "not installed" not in text
    assert e.value.hint == "pip install --upgrade 'expertkit[rag]'"
    assert isinstance(e.value.__cause__, ImportError)  # --debug shows the real traceback


def test_the_dependency_a_broken_package_lacks_is_named_in_the_hint(tmp_path, monkeypatch):
    # lxml's own shim: `from lxml_html_clean import *` under `except ImportError: raise ImportError(...) from None`
    init = f"try:\n    import ek_absent_cleaner\nexcept ImportError:\n    raise ImportError({LXML_6!r}) from None\n"
    put_package(monkeypatch, tmp_path, "ek_lxml6_shim", init)
    with pytest.raises(BrokenExtraError) as e:
        import_optional("ek_lxml6_shim", "ek-lxml6-shim", "rag", needed_for="reading HTML")
    assert e.value.message.startswith("reading HTML: ek-lxml6-shim is installed but could not be imported: ")
    assert LXML_6 in e.value.message
    assert e.value.hint == (
        "pip install --upgrade 'expertkit[rag]'; or only the module it lacks: pip install ek_absent_cleaner"
    )


def test_a_missing_submodule_of_an_installed_package_is_not_called_not_installed(tmp_path, monkeypatch):
    put_package(monkeypatch, tmp_path, "ek_old_release", "")
    with pytest.raises(BrokenExtraError, match="No module named 'ek_old_release.metadata'"):
        import_optional("ek_old_release.metadata", "ek-old-release", "rag")


def test_errors_other_than_import_errors_are_reported_as_broken(tmp_path, monkeypatch):
    put_package(monkeypatch, tmp_path, "ek_bad_so", "raise OSError('libfoo.so.1: cannot open shared object file')\n")
    with pytest.raises(BrokenExtraError, match="could not be imported: OSError: libfoo.so.1: cannot open"):
        import_optional("ek_bad_so", "ek-bad-so", "eval")


def test_a_package_blocked_in_sys_modules_counts_as_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "colorsys", None)  # how tests hide an installed package
    with pytest.raises(MissingExtraError, match="is not installed"):
        import_optional("colorsys", "colorsys", "serve")


def test_without_an_extra_the_hint_installs_the_package_itself(tmp_path, monkeypatch):
    with pytest.raises(MissingExtraError) as e:
        import_optional("expertkit_test_absent", "absent-pkg", None, needed_for="st: embedders")
    assert e.value.message == "st: embedders: absent-pkg is not installed"
    assert e.value.hint == "pip install absent-pkg"
    put_package(monkeypatch, tmp_path, "ek_broken_plain", "raise ImportError('nope')\n")
    with pytest.raises(BrokenExtraError) as e:
        import_optional("ek_broken_plain", "broken-plain", None)
    assert e.value.hint == "pip install --upgrade broken-plain"


def test_an_importable_module_is_returned():
    import json

    assert import_optional("json", "json", "serve") is json
    assert issubclass(MissingExtraError, ExpertkitError) and issubclass(BrokenExtraError, ExpertkitError)
