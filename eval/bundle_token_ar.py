"""The bundled token model: the token model with whichever decoder gave its samples the lower FD, and its result.

``eval/gpu/bundled_token_ar.sh`` scores the new token model twice, through the bundled VQ's decoder
(``results/cifar10-token-ar.json``) and through that decoder fine-tuned on its tokens
(``results/cifar10-token-ar-vq-decoder.json``, the generator copy ``eval/swap_decoder.py`` made). Where the fine-tuned
decoder scores lower, this exports that copy as the asset and makes ``results/cifar10-token-ar.json`` the bundled
model's: the training figures of the token run with the FD report of the copy (the first scoring kept as
``results/cifar10-token-ar-vq.json``, and its FD beside as ``fd_cifar10cls_bundled_vq_decoder``). Nothing is measured
here; the result keeps the date, commit and hardware of the run that measured it.

    python eval/bundle_token_ar.py --swapped runs/cifar10-token-ar-vq-decoder --asset visgen/assets/cifar10-token-ar
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

TRAINING = ("steps", "train_images_per_s", "train_minutes", "final_train_loss", "val_loss_by_step", "final_val_loss",
            "kept_step", "kept_val_loss")  # fmt: skip
PLAIN, SWAPPED, FIRST = "cifar10-token-ar", "cifar10-token-ar-vq-decoder", "cifar10-token-ar-vq"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--swapped", required=True, help="the token model's copy decoding through the fine-tuned decoder")
    p.add_argument("--asset", required=True, help="where the bundled model goes")
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    out = Path(args.results_dir)
    try:
        plain, swapped = (json.loads((out / f"{n}.json").read_text()) for n in (PLAIN, SWAPPED))
        if "decoder" in plain["metrics"]:
            print(f"error: {out / PLAIN}.json is already a bundled model's result", file=sys.stderr)
            return 2
        fd_plain, fd_swapped = plain["metrics"]["fd_cifar10cls"], swapped["metrics"]["fd_cifar10cls"]
    except (OSError, KeyError, json.JSONDecodeError) as e:
        print(f"error: cannot read the two scorings in {out}: {e}", file=sys.stderr)
        return 2
    print(f"FD(cifar10cls): {fd_plain:.4f} through the bundled VQ's decoder, {fd_swapped:.4f} through the fine-tuned one")
    if not fd_swapped < fd_plain:
        print(f"{args.asset} keeps the bundled VQ's decoder")
        return 0
    from visgen.checkpoint import export_model

    export_model(args.swapped, args.asset)
    (out / f"{FIRST}.json").write_text(json.dumps({**plain, "name": FIRST}, indent=2) + "\n")
    shutil.copyfile(out / f"{PLAIN}.png", out / f"{FIRST}.png")
    metrics = {k: plain["metrics"][k] for k in TRAINING if k in plain["metrics"]}
    metrics.update(swapped["metrics"])
    metrics.update(decoder=f"the bundled VQ's, fine-tuned on its tokens ({SWAPPED})",
                   fd_cifar10cls_bundled_vq_decoder=fd_plain)  # fmt: skip
    bundled = {"name": PLAIN, "date": swapped["date"], "commit": swapped["commit"], "hardware": swapped["hardware"],
               "command": f"eval/gpu/bundled_token_ar.sh: {plain['command']}; {swapped['command']}; "
               f"python eval/bundle_token_ar.py "
               f"--swapped {args.swapped} --asset {args.asset}", "metrics": metrics}  # fmt: skip
    (out / f"{PLAIN}.json").write_text(json.dumps(bundled, indent=2) + "\n")
    shutil.copyfile(out / f"{SWAPPED}.png", out / f"{PLAIN}.png")
    print(f"{args.asset}: the token model with its fine-tuned decoder; {out / PLAIN}.json is its result")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
