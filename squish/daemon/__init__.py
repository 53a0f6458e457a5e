"""The daemon: the process that serves the reconciler on a socket and on /metrics.

- ``squish.daemon.main``: the process (flags, lock, socket, runtime,
  sources, reconciler, signals); ``config``: its settings file;
  ``sdnotify``: systemd readiness.
- ``squish.daemon.control``: the control plane the API serves
  (``DaemonControl``, over the reconciler).
- ``squish.daemon.api`` (a package: errors, requests, streams, routes,
  server, webhook) and ``openapi``: the JSON API on a unix socket, its
  OpenAPI document and the webhook; ``layer_admin`` and ``source_admin``:
  what ``squish layer ...``, ``squish sources``/``sync`` do, and webhook
  signatures.
- ``squish.daemon.metrics``: the Prometheus exporter.

Nothing of the ``squish`` command's client side imports this package; the
two meet only in the shapes of ``squish.api_schema``.
"""
