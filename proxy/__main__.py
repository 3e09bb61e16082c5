"""``python -m proxy`` is the ``portico`` command."""

from proxy.cli import main

raise SystemExit(main())
