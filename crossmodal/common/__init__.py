"""The leaf kernel shared by ``crossmodal`` and ``extractors``: errors with hints, the Registry, the modality names,
typed ``key=value`` overrides, hashing, ``atomic_write`` and library-version records.

It imports the standard library and numpy only, nothing else of ours (tests/test_layering.py checks), so that the
extractors, which may not import the core, share these with it instead of keeping copies.
"""

from __future__ import annotations
