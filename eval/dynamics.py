"""The dynamics score of generated Moving Fashion-MNIST clips: ``python eval/dynamics.py --input ... --ref ...``
(the code is ``visgen/cli/dynamics.py``)."""

import sys

from visgen.cli.dynamics import main

if __name__ == "__main__":
    sys.exit(main())
