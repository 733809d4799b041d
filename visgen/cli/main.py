"""``visgen``: the installed command. ``visgen train|sample|fid|recon|bpd|fvd|dynamics ...`` take the options of
``train.py``, ``sample.py``, ``eval/fid.py``, ``eval/tokenizer_recon.py``, ``eval/bpd.py``, ``eval/fvd.py`` and
``eval/dynamics.py`` (thin wrappers over the same modules), from any
folder; ``visgen COMMAND --help`` lists them."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("visgen.cli.train", "train a tokenizer, a generator or a feature draft from a recipe"),
    "sample": ("visgen.cli.sample", "sample images from a generator checkpoint (default: the bundled CIFAR-10 model)"),
    "fid": ("visgen.cli.fid", "FD / IS / KID / precision-recall and the memorisation report"),
    "recon": ("visgen.cli.recon", "a tokenizer's reconstruction quality (PSNR, SSIM, usage, rFD)"),
    "bpd": ("visgen.cli.bpd", "bits per dimension of a pixel-level generator on a data set"),
    "fvd": ("visgen.cli.fvd", "video FD per frame and per clip (offline, or FVD on I3D), copies, dynamics score"),
    "dynamics": ("visgen.cli.dynamics", "the dynamics score of Moving Fashion-MNIST clips against its floor"),
    "push": ("visgen.hub", "upload a saved model folder to the Hugging Face Hub"),
    "demo": ("visgen.demo", 'a demo page in the browser (Gradio: pip install "visgen[demo]")'),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "usage: visgen COMMAND [options]\n\n" + __doc__.split("\n\n")[0] + "\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"visgen: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog=f"visgen {name}")


if __name__ == "__main__":
    sys.exit(main())
