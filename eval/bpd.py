"""Bits per dimension of a pixel-level generator on a data set: ``python eval/bpd.py --checkpoint ... --data ...``
(the same as the installed ``visgen bpd``; the code is ``visgen/cli/bpd.py``)."""

import sys

from visgen.cli.bpd import main

if __name__ == "__main__":
    sys.exit(main())
