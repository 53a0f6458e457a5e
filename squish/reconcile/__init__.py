"""Reconciling: keeping what runs equal to what the squishfiles say.

- ``squish.reconcile.plan``: the pure core, ``plan(desired, actual, now)``
  -> actions, table-tested.
- ``squish.reconcile.spec``: from a squishfile and the layer store to the
  ``ContainerSpec`` the runtime runs.
- ``squish.reconcile.reconciler``: the level-triggered loop that plans and
  applies the actions against a ``Runtime``, with back-off, deadlines and
  events.
- ``squish.reconcile.status``: what it reports: each container's phase and
  status, and the events.

Below it: the model, the layers, the runtime and the sources. Above it: the
daemon, which serves it.
"""
