"""FID / IS / KID / precision-recall and the memorisation report: ``python eval/fid.py --input ... --ref ...``
(the same as the installed ``visgen fid``; the code is ``visgen/cli/fid.py``). Runs under ``accelerate launch`` too."""

import sys

from visgen.cli.fid import main

if __name__ == "__main__":
    sys.exit(main())
