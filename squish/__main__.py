"""``python -m squish``: the same as the ``squish`` command."""

from squish.main import main

raise SystemExit(main())
