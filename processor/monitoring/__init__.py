"""A processor process's own Prometheus metrics (``metrics``) and their server (``server``)."""
