"""``python -m segblocks``: same as the ``segblocks`` command."""

import sys

from segblocks.cli import main

sys.exit(main())
