"""Attach a fine-tuned decoder to a generator: a copy of the generator (``--out``) that decodes its tokens through
another tokenizer of the same tokens, such as ``train.py tokenizer --recipe tokenizers/cifar10-vq-decoder.yaml``
makes (the encoder and codebook frozen, the decoder trained on). The two tokenizers must encode alike: the same type
and settings, and every weight outside the decoder (``Tokenizer.decoder_parts``) equal; otherwise the generator's
tokens would mean something else to the new decoder, and this stops with a message.

    python eval/swap_decoder.py --generator visgen/assets/cifar10-token-ar --tokenizer runs/cifar10-vq-decoder/final \
        --out runs/cifar10-token-ar-vq-decoder        # then sample.py / eval/fid.py --checkpoint that folder
"""

from __future__ import annotations

import argparse

import torch
from safetensors.torch import load_file

from visgen import hub
from visgen.checkpoint import EMA_NAME, CheckpointError, load_model
from visgen.config import ConfigError
from visgen.generator import Generator
from visgen.model_card import read_card, write_card
from visgen.tokenizers.base import Tokenizer


def same_tokens(old: Tokenizer, new: Tokenizer) -> str | None:
    """Why ``new`` would not read ``old``'s tokens alike (None where it does)."""
    if type(old) is not type(new) or old.config != new.config:
        return f"a {type(new).__name__} of other settings than the generator's {type(old).__name__}"
    a, b = old.token_state(), new.token_state()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    return f"weights outside the decoder differ ({', '.join(differ[:4])}...)" if differ else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", required=True, help="a generator folder, asset:NAME or Hub id")
    p.add_argument("--tokenizer", required=True, help="the tokenizer with the new decoder")
    p.add_argument("--out", required=True, help="where the generator's copy goes")
    args = p.parse_args(argv)
    try:
        folder = hub.resolve(args.generator)
        gen = load_model(folder)
        tok = load_model(args.tokenizer)
        if not isinstance(gen, Generator) or not isinstance(tok, Tokenizer):
            raise ConfigError("--generator must be a generator and --tokenizer a tokenizer")
        why = same_tokens(gen.tokenizer, tok)
        if why:
            raise ConfigError(f"{args.tokenizer} does not read {args.generator}'s tokens alike: {why}")
    except (ConfigError, CheckpointError, OSError) as e:
        print(f"error: {e}")
        return 2
    object.__setattr__(gen, "tokenizer", tok.eval().requires_grad_(False))
    gen.config.tokenizer = str(args.tokenizer)  # a folder: saved with the copy, in its tokenizer/ subfolder
    ema = folder / EMA_NAME  # the generator's own weights go along as they are, its EMA too
    gen.save_pretrained(args.out, ema_state=load_file(str(ema)) if ema.is_file() else None)
    training = read_card(folder).get("visgen", {}).get("training")
    if training:  # the copy was trained as the generator was; its card says so, and which decoder it took
        write_card(args.out, training={**training, "decoder": f"{args.tokenizer} (eval/swap_decoder.py)"})
    print(f"{args.out}: {args.generator} decoding through {args.tokenizer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
