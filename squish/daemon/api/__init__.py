"""The daemon's JSON API: HTTP on a unix socket, in front of a ``ControlPlane``.

The daemon (:mod:`squish.daemon.main`) builds the app with :func:`make_app`
around its reconciler and runs it with :func:`serve` inside its own task
group; :mod:`squish.cli.client` (and so the ``squish`` command) is the other
end. The API only translates: a request becomes one call on
:class:`~squish.daemon.control.ControlPlane` (or the layer and source
administration), its result becomes JSON, and a
:class:`~squish.errors.SquishError` becomes ``{"error": "<one line>"}`` with
a status saying whose fault it was. Only the daemon's own user may use the
socket.

One module per concern, from the outside in:

- :mod:`~squish.daemon.api.server`: serving on the unix socket (mode 0600,
  peer uid checked with ``SO_PEERCRED``, a dead daemon's socket replaced) and
  on TCP; uvicorn without its signal handlers, with a deadline for headers.
- :mod:`~squish.daemon.api.routes`: :func:`make_app` and every route, as
  :class:`~squish.daemon.openapi.Operation` lists that also make the OpenAPI
  document (the route table is there).
- :mod:`~squish.daemon.api.webhook`: the webhook's own small app (``POST
  /v1/webhook``), served on TCP, that has the git sources fetch on a push.
- :mod:`~squish.daemon.api.streams`: streamed answers (events, pull progress,
  logs followed across rotation) and the drain that ends them on shutdown.
- :mod:`~squish.daemon.api.requests`: bodies and query parameters, checked.
- :mod:`~squish.daemon.api.errors`: exceptions to statuses (the table is
  there) and the one-line JSON answers.

Everything logs to the logger ``squish.daemon.api``, except the webhook: its
records keep ``squish.daemon.source_admin``, the module it came from.
"""

from __future__ import annotations

from squish.daemon.api.routes import make_app
from squish.daemon.api.server import HEADER_TIMEOUT, check_socket, peer_refusal, serve, serve_tcp
from squish.daemon.api.webhook import webhook_app

__all__ = [
    "HEADER_TIMEOUT",
    "check_socket",
    "make_app",
    "peer_refusal",
    "serve",
    "serve_tcp",
    "webhook_app",
]
