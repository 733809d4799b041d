"""Tokenizer reconstruction quality: ``python eval/tokenizer_recon.py CHECKPOINT --data ...`` (the same as the
installed ``visgen recon``; the code is ``visgen/cli/recon.py``)."""

import sys

from visgen.cli.recon import main

if __name__ == "__main__":
    sys.exit(main())
