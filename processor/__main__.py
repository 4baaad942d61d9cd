"""``python -m processor``: the command-line interface."""

import sys

from processor.cli import main

sys.exit(main())
