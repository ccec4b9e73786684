"""``python -m banscan`` runs the command line (the same as the ``banscan`` script)."""

import sys

from .cli import main

sys.exit(main())
