"""``python -m distri.dryrun``: see :mod:`distri.dryrun`."""

import sys

from distri.dryrun.cli import main

sys.exit(main())
