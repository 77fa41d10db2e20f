"""``python -m fleetmap`` runs the CLI."""

from .cli import main

raise SystemExit(main())
