"""What the trainer costs over a bare training loop: the same GPT-B token model and batch, trained by ``Trainer``
(with its non-finite guard: the gradient norm, a copy of the weights and AdamW's state before each update, the
finiteness check and one host sync per step) and by ``bench.common.bench_training`` (forward, backward, fused AdamW,
nothing else). Both bf16 autocast, no clipping, no EMA.

    python bench/trainer.py --name bench-trainer          # GPU
    python bench/trainer.py --tiny --train-batches 4      # a check on the CPU
"""

from __future__ import annotations

import tempfile

import torch
from common import bench_training, parser, setup, sync
from token_ar import build

from visgen.train.generator_task import GeneratorTask
from visgen.train.trainer import TrainConfig, Trainer


class RandomTokens(torch.utils.data.Dataset):
    """Token grids and labels held in memory, served whole batches at a time like the trainer's token cache."""

    skipped = 0

    def __init__(self, n: int, grid: tuple[int, int], vocab: int, classes: int, device):
        g = torch.Generator().manual_seed(0)
        self.tokens = torch.randint(0, vocab, (n, *grid), generator=g).to(device)
        self.labels = torch.randint(0, classes, (n,), generator=g).to(device)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict:
        return {"tokens": self.tokens[i], "label": self.labels[i]}

    def set_epoch(self, epoch: int):
        pass

    def get_batch(self, idx: torch.Tensor) -> dict:
        idx = idx.to(self.tokens.device)
        return {"tokens": self.tokens[idx], "label": self.labels[idx], "skipped": 0}


def trainer_throughput(gen, batch: int, steps: int, device) -> tuple[float, float]:
    """(tokens/s, peak GiB) of ``Trainer.fit`` over ``steps`` timed steps (its first step is not timed)."""
    grid = gen.schedule.grid if hasattr(gen.schedule, "grid") else None
    data = RandomTokens(batch * (steps + 1), grid, gen.tokenizer.vocab_size, gen.config.num_classes, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(out_dir=out, steps=steps + 1, batch_size=batch, mixed_precision="bf16" if device.type ==
                          "cuda" else "no", clip_grad=0.0, log_every=0, eval_every=0, sample_every=0, ckpt_every=0,
                          val_images=batch, num_workers=0, lr_schedule="constant")  # fmt: skip
        trainer = Trainer(GeneratorTask(gen), data, RandomTokens(batch, grid, gen.tokenizer.vocab_size,
                                                                 gen.config.num_classes, device), cfg)  # fmt: skip
        trainer.save_preview = lambda batch: None  # sampling a preview is not training
        summary = trainer.fit()
        sync()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    return summary["train_images_per_s"] * gen.schedule.seq_len, peak


def main():
    args = parser(__doc__).parse_args()
    gen, rec = setup(args, build)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = 2 if args.tiny else 20
    for bs in args.train_batches:
        grid = gen.schedule.grid
        tokens = torch.randint(0, gen.tokenizer.vocab_size, (bs, *grid), device=device)
        bare = bench_training(gen, tokens, steps=steps)
        rec.add(f"bare_b{bs}_tokens_per_s", bare["tokens_per_s"], ".0f")
        if "peak_gib" in bare:
            rec.add(f"bare_b{bs}_peak_gib", bare["peak_gib"], ".1f")
        tps, peak = trainer_throughput(gen, bs, steps, device)
        rec.add(f"trainer_b{bs}_tokens_per_s", tps, ".0f")
        if device.type == "cuda":
            rec.add(f"trainer_b{bs}_peak_gib", peak, ".1f")
        rec.add(f"trainer_over_bare_b{bs}", tps / bare["tokens_per_s"], ".3f")


if __name__ == "__main__":
    main()
