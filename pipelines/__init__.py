"""pipelines: the edges. Workspace, end-to-end steps, CLI, web server and distributed runner."""
