"""pipelines: the edges. Workspace, end-to-end steps, CLI, web server and distributed runner."""

from __future__ import annotations
