"""`python -m boxforge` (and `torchrun -m boxforge`) runs the CLI."""

from boxforge.cli import main

raise SystemExit(main())
