"""MLflow plumbing: runs, params and metrics logging, the private tracking server."""
