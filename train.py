"""Train a tokenizer or a generator from a recipe: ``python train.py tokenizer --recipe tokenizers/cifar10-vq.yaml``.

Runs on one CPU or GPU as is, and on many GPUs or machines with ``accelerate launch train.py ...``.
"""

import sys

from visgen.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
