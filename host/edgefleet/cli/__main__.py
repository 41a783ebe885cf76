"""`python -m edgefleet.cli`: the `edgefleet` command (how tests and the demo start it as a child process)."""

import sys

from . import main

sys.exit(main())
