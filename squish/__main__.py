"""``python -m squish``: the same as the ``squish`` command."""

from squish.cli import main

raise SystemExit(main())
