"""Video FD (per frame, whole clips: offline or on I3D), the memorisation check and the dynamics score of generated
clips: ``python eval/fvd.py --input ... --ref ...`` (the code is ``visgen/cli/fvd.py``)."""

import sys

from visgen.cli.fvd import main

if __name__ == "__main__":
    sys.exit(main())
