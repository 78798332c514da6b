"""`python -m orchestrator ...` is the `orch` command."""

import sys

from orchestrator.control.cli import main

sys.exit(main())
