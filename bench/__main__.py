"""``python -m bench``: see ``bench.run``."""

import sys

from bench.run import main

# The guard matters: the latency step's poller is a spawned process, which imports this module.
if __name__ == "__main__":
    sys.exit(main())
