"""``python -m visgen COMMAND ...``: the ``visgen`` command without its installed script."""

import sys

from visgen.cli.main import main

sys.exit(main())
