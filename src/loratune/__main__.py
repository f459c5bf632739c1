"""``python -m loratune``: the ``loratune`` command (what ``torchrun -m loratune`` starts in each process)."""

import sys

from loratune.cli import main

sys.exit(main())
