"""Library-version records: what a model card and a store table's extractor.json say they were made with."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import sys
from collections.abc import Iterable


def library_versions(names: Iterable[str]) -> dict[str, str]:
    """``{name: version}`` for each of ``names`` that is installed; ``"python"`` gives the interpreter's version.

    A module already imported under that name answers with its ``__version__`` (the build that runs: torch's
    ``2.14.1+cu130``, whose distribution metadata says ``2.14.1``); otherwise the distribution's metadata does, so
    that nothing is imported for the record. Names not installed are left out.
    """
    versions: dict[str, str] = {}
    for name in names:
        module = sys.modules.get(name)
        if name == "python":
            versions[name] = platform.python_version()
        elif isinstance(getattr(module, "__version__", None), str):
            versions[name] = module.__version__  # type: ignore[union-attr]
        else:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                versions[name] = importlib.metadata.version(name)
    return versions
