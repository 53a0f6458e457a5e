"""The daemon: the process that serves the reconciler on a socket and on /metrics.

- ``squish.daemon.main``: the process (flags, lock, socket, runtime,
  sources, reconciler, signals); ``config``: its settings file;
  ``sdnotify``: systemd readiness.
- ``squish.daemon.control``: the control plane the API serves.
- ``squish.daemon.api`` and ``openapi``: the JSON API on a unix socket and
  its OpenAPI document; ``layer_admin`` and ``source_admin``: what
  ``squish layer ...``, ``squish sources``/``sync`` and the webhook do.
- ``squish.daemon.metrics``: the Prometheus exporter.

Nothing of the ``squish`` command's client side imports this package; the
two meet only in the shapes of ``squish.api_schema``.
"""
