"""``python -m loratune``: the ``loratune`` command (what ``torchrun -m loratune`` starts in each process)."""

import os
import sys

from loratune.cli import main
from loratune.train.distributed import launched

code = main()
if launched() is not None:
    # A torchrun rank leaves without the interpreter's teardown, where gloo's native threads can still abort a
    # finished run (SIGABRT). Its files are closed by then; its output is flushed here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
