"""``python -m leveret.perf``: the same as the ``leveret-perf`` command."""

import sys

from leveret.perf.cli import main

if __name__ == "__main__":  # importing this module (e.g. to check the wheel) runs nothing
    sys.exit(main())
