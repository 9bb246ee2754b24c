"""``python -m leveret.ctl``: the same as the ``leveret-ctl`` command."""

import sys

from leveret.ctl.cli import main

if __name__ == "__main__":  # importing this module (e.g. to check the wheel) runs nothing
    sys.exit(main())
