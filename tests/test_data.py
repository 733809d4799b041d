import collections
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visgen.data import DataConfig, DataError, build_dataset, collate


def test_image_folder_labels_and_range(cifar_train):
    ds = build_dataset(DataConfig(path=cifar_train, image_size=32))
    assert len(ds) == 240 and ds.num_classes == 10
    item = ds[0]
    assert item["image"].shape == (3, 32, 32)
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert sorted({ds[i]["label"] for i in range(0, 240, 24)}) == list(range(10))


def test_flat_folder_is_unlabelled(tmp_path, cifar_train):
    src = sorted(Path(cifar_train).rglob("*.jpg"))[:5]
    for p in src:
        shutil.copy(p, tmp_path / p.name)
    ds = build_dataset(DataConfig(path=str(tmp_path), image_size=16))
    assert len(ds) == 5 and ds[0]["label"] == -1 and ds[0]["image"].shape == (3, 16, 16)


def test_idx_grey_to_rgb_and_resize(fmnist):
    ds = build_dataset(DataConfig(path=fmnist, image_size=32, channels=3))
    assert len(ds) == 200 and ds.classes[0] == "T-shirt/top"
    x = ds[0]["image"]
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[1])
    test = build_dataset(DataConfig(path=fmnist, split="test", image_size=28, channels=1))
    assert len(test) == 50 and test[0]["image"].shape == (1, 28, 28)


def test_cifar10_python_batches(tmp_path, cifar_train):
    ds = build_dataset(DataConfig(path=cifar_train, image_size=32))
    imgs = np.stack(
        [((ds[i]["image"].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8) for i in range(20)]
    )
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    batch = {
        b"data": imgs.transpose(0, 3, 1, 2).reshape(20, -1),
        b"labels": [ds[i]["label"] for i in range(20)],
    }
    (root / "data_batch_1").write_bytes(pickle.dumps(batch))
    py = build_dataset(DataConfig(path=str(tmp_path), image_size=32))
    assert type(py).__name__ == "Cifar10Dataset" and len(py) == 20
    assert torch.allclose(py[3]["image"], ds[3]["image"], atol=1 / 127.5)
    assert py[3]["label"] == ds[3]["label"]


def test_cifar10_batches_refuse_foreign_pickles(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": collections.OrderedDict()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        build_dataset(DataConfig(path=str(tmp_path)))


def test_corrupt_image_is_skipped_and_counted(tmp_path, cifar_train):
    cls = tmp_path / "cat"
    cls.mkdir()
    for p in sorted(Path(cifar_train, "cat").glob("*.jpg"))[:3]:
        shutil.copy(p, cls / p.name)
    (cls / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = next(cls.glob("0*.jpg")).read_bytes()
    (cls / "truncated.jpg").write_bytes(good[: len(good) // 3])
    ds = build_dataset(DataConfig(path=str(tmp_path), image_size=32))
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["skipped"] == 2 and batch["image"].shape == (3, 3, 32, 32)


@pytest.mark.parametrize(
    "cfg, match",
    [
        (DataConfig(path="/no/such/dir"), "not found"),
        (DataConfig(path=""), "no data path"),
        (DataConfig(path="tests/data/cifar10/train", format="lmdb"), "unknown data format"),
        (DataConfig(path="tests/data/make_cuts.py"), "is a file"),
        (DataConfig(path="tests/data/cifar10/train", format="idx"), "images-idx3"),
        (DataConfig(path="tests/data/cifar10/train", format="cifar10"), "cifar-10-batches-py"),
    ],
)
def test_clear_errors(cfg, match):
    with pytest.raises(DataError, match=match):
        build_dataset(cfg)


def test_empty_folder(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.txt", format="PNG")
    with pytest.raises(DataError, match="no images"):
        build_dataset(DataConfig(path=str(tmp_path)))


def test_flips_depend_on_epoch_not_call_order(cifar_train):
    ds = build_dataset(DataConfig(path=cifar_train, random_flip=True), seed=1)
    a = [ds[i]["image"] for i in range(8)]
    assert all(torch.equal(x, ds[i]["image"]) for i, x in enumerate(a))
    ds.set_epoch(1)
    assert any(not torch.equal(x, ds[i]["image"]) for i, x in enumerate(a))


def test_cached_tokens_flip_as_the_images_do(cifar_train):
    """``data.random_flip`` with the token cache: each item is served as its mirrored image's tokens about half the
    time, chosen per (seed, epoch, index), the same wherever the cache lies."""
    from tests.test_tokenizers import TINY_VQ
    from visgen.tokenizers import VQTokenizer
    from visgen.train.generator_task import TokenDataset

    torch.manual_seed(0)
    tok = VQTokenizer(TINY_VQ).eval()
    images = build_dataset(DataConfig(path=cifar_train, image_size=16, limit=64, random_flip=True), seed=1)
    cache = TokenDataset.encode(images, tok, batch_size=32, seed=1)
    x = torch.stack([build_dataset(DataConfig(path=cifar_train, image_size=16, limit=64), seed=1)[i]["image"]
                     for i in range(64)])  # fmt: skip
    with torch.no_grad():
        plain, mirrored = tok.encode(x), tok.encode(x.flip(-1))
    assert not torch.equal(plain, mirrored)
    got = cache.get_batch(torch.arange(64))["tokens"]
    flipped = torch.tensor([torch.equal(g, m) and not torch.equal(g, p) for g, p, m in zip(got, plain, mirrored)])
    kept = torch.tensor([torch.equal(g, p) for g, p in zip(got, plain)])
    assert (flipped | kept).all() and 16 < flipped.sum() < 48
    cache.set_epoch(1)
    assert not torch.equal(cache.get_batch(torch.arange(64))["tokens"], got)  # other flips next epoch
    cache.set_epoch(0)
    cache.to_device(torch.device("cpu"))
    assert torch.equal(cache.get_batch(torch.arange(64))["tokens"], got)


def test_cached_tokens_take_ten_crops(cifar_train):
    """``tokenizer.crops: 5`` (LlamaGen's ten-crop): each image cached as the centre and four corners of itself
    enlarged by ``crop_scale``, each mirrored too under ``data.random_flip``; an epoch serves one of the ten per image,
    drawn per (seed, epoch, index); bad settings are refused."""
    from tests.test_tokenizers import TINY_VQ
    from visgen.config import ConfigError
    from visgen.tokenizers import VQTokenizer
    from visgen.train.generator_task import TokenCacheConfig, TokenDataset, five_crops

    x = torch.rand(2, 3, 16, 16) * 2 - 1
    same = five_crops(x, 1.0)  # nothing enlarged: every crop is the image
    assert all(torch.allclose(c, x, atol=1e-5) for c in same)
    crops = five_crops(x, 1.25)  # 20 x 20: the corners 4 pixels apart
    assert all(c.shape == x.shape for c in crops) and not torch.equal(crops[1], crops[4])
    torch.manual_seed(0)
    tok = VQTokenizer(TINY_VQ).eval()
    images = build_dataset(DataConfig(path=cifar_train, image_size=16, limit=32, random_flip=True), seed=1)
    cache = TokenDataset.encode(images, tok, batch_size=16, seed=1, crops=5, crop_scale=1.25)
    assert cache.variants.shape[:2] == (32, 10) and len(cache) == 32
    plain = build_dataset(DataConfig(path=cifar_train, image_size=16, limit=32), seed=1)
    first = torch.stack([plain[i]["image"] for i in range(2)])
    with torch.no_grad():
        assert torch.equal(cache.variants[:2, 8], tok.encode(five_crops(first, 1.25)[4]))  # the last corner
        assert torch.equal(cache.variants[:2, 9], tok.encode(five_crops(first, 1.25)[4].flip(-1)))  # its mirror
    got = cache.get_batch(torch.arange(32))["tokens"]
    assert torch.equal(got, cache.variants[torch.arange(32), cache.choice]) and len(cache.choice.unique()) > 3
    cache.set_epoch(1)
    assert not torch.equal(cache.get_batch(torch.arange(32))["tokens"], got)
    for bad in ({"crops": 3}, {"crop_scale": 0.5}, {"crops": 5, "cache": False}):
        with pytest.raises(ConfigError, match="tokenizer.crop"):
            TokenCacheConfig(**bad)
