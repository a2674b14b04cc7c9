"""`python -m tusserver` runs the command line interface."""

from tusserver.cli import main

raise SystemExit(main())
