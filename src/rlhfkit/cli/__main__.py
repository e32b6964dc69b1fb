"""``python -m rlhfkit.cli``: the ``rlhfkit`` command."""

import sys

from rlhfkit.cli.main import main

sys.exit(main())
