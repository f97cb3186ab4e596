"""``python -m hibiki``: the same as the ``hibiki`` command."""

import sys

from hibiki.cli import main

sys.exit(main())
