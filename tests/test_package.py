"""The package's shape: its public surface and the one-way flow of imports."""

from __future__ import annotations

import ast
from pathlib import Path

import tusserver

PACKAGE = Path(tusserver.__file__).parent


def test_public_surface_is_sorted_and_importable() -> None:
    assert tusserver.__all__ == sorted(tusserver.__all__)
    for name in tusserver.__all__:
        assert getattr(tusserver, name) is not None


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_http_layer_knows_starlette() -> None:
    """app.py and endpoint.py, and the handlers of the tus endpoint, of the probes and metrics, of the
    operator page."""
    for path in PACKAGE.rglob("*.py"):
        http_layer = {"app.py", "endpoint.py", "handlers.py", "ietf_handlers.py", "ops.py", "admin.py"}
        if path.name in http_layer or path.parent.name == "demo":
            continue
        assert not any(name.startswith("starlette") for name in _imports(path)), path


def test_every_module_says_what_it_owns() -> None:
    for path in PACKAGE.rglob("*.py"):
        assert ast.get_docstring(ast.parse(path.read_text())), path


def test_type_checkers_hold_value_classes_frozen() -> None:
    """`Upload` and the other `value_class`es are plain dataclasses at run time (for speed); mypy, which
    CI runs, is what keeps them immutable: an assignment to a field must fail type checking."""
    from mypy import api

    source = "from tusserver.core import Upload\ndef change(upload: Upload) -> None:\n    upload.offset = 1\n"
    report, _, status = api.run(["--strict", "--no-incremental", "--no-error-summary", "-c", source])
    assert status == 1
    assert 'Property "offset" defined in "Upload" is read-only' in report
