"""Sample images from a generator: ``python sample.py`` (the bundled CIFAR-10 model) or ``--checkpoint DIR``."""

import sys

from visgen.cli.sample import main

if __name__ == "__main__":
    sys.exit(main())
