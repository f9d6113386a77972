"""Image data loaders: IDX parsing, download with checksums, safe CIFAR-10 unpickling, image folders, dispatch."""

import functools
import gzip
import hashlib
import http.server
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from progdistill.data import images
from progdistill.data.images import (
    FASHION_MNIST_FILES,
    DataError,
    load_cifar10,
    load_fashion_mnist,
    load_image_dataset,
    load_image_folder,
)

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Cache in tmp, no system-wide default folder, no proxies for the local HTTP server."""
    monkeypatch.setenv("PROGDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(images, "FASHION_MNIST_DEFAULT", tmp_path / "no-system-copy")
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


def idx_bytes(arr: np.ndarray) -> bytes:
    """A uint8 array as IDX bytes."""
    magic = 0x0800 | arr.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def tiny_split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n random 28x28 images (with 0 and 255 present) and labels 0..9."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    x[0, 0, 0], x[0, 0, 1] = 0, 255
    return x, (np.arange(n) % 10).astype(np.uint8)


def write_split(folder: Path, split: str, n: int = 5, gz: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write the split's two IDX files (gzipped or plain) into folder; return the raw arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    x, y = tiny_split(n, seed)
    for name, arr in zip(FASHION_MNIST_FILES[split], (x, y)):
        data = idx_bytes(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return x, y


# ---------------------------------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_gz_and_plain(tmp_path, gz):
    x, y = write_split(tmp_path / "fm", "test", n=7, gz=gz)
    data = load_fashion_mnist(tmp_path / "fm", "test")
    assert data.x.shape == (7, 1, 28, 28) and data.x.dtype == torch.float32
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == y.tolist()
    assert data.x.min() == -1.0 and data.x.max() == 1.0
    torch.testing.assert_close(data.x[:, 0], torch.from_numpy(x).float() / 127.5 - 1)


def test_fashion_mnist_train_split_and_bad_split(tmp_path):
    write_split(tmp_path, "train", n=3)
    assert len(load_fashion_mnist(tmp_path, "train")) == 3
    with pytest.raises(DataError, match="split"):
        load_fashion_mnist(tmp_path, "valid")


def test_truncated_idx_names_file(tmp_path):
    write_split(tmp_path, "test", n=4, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte") as err:
        load_fashion_mnist(tmp_path, "test")
    assert "bytes" in str(err.value)


def test_truncated_gzip_names_file(tmp_path):
    write_split(tmp_path, "test", n=4, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:15])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_fashion_mnist(tmp_path, "test")


def test_wrong_magic_names_file(tmp_path):
    write_split(tmp_path, "test", n=4, gz=False)
    # Swap the two files' contents: each now has the other's magic number.
    a, b = (tmp_path / n for n in FASHION_MNIST_FILES["test"])
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*magic number 2049, expected 2051"):
        load_fashion_mnist(tmp_path, "test")


def test_image_and_label_counts_must_agree(tmp_path):
    write_split(tmp_path, "test", n=4, gz=False)
    _, y = tiny_split(6)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(y))
    with pytest.raises(DataError, match="4 images.*6 labels"):
        load_fashion_mnist(tmp_path, "test")


def test_missing_lists_every_place_and_fixes(tmp_path):
    cache = tmp_path / "cache" / "fashion-mnist"
    cache.mkdir(parents=True)
    (cache / "t10k-images-idx3-ubyte.gz").write_bytes(b"")  # partial: labels missing
    with pytest.raises(DataError) as err:
        load_fashion_mnist(split="test")
    msg = str(err.value)
    assert str(tmp_path / "no-system-copy") in msg and str(cache) in msg
    assert "t10k-labels-idx1-ubyte" in msg
    assert "dataset-fashion-mnist" in msg and "--download" in msg and "folder" in msg


def test_lookup_falls_back_to_cache(tmp_path):
    write_split(tmp_path / "cache" / "fashion-mnist", "test", n=2)
    assert len(load_fashion_mnist(split="test")) == 2
    write_split(images.FASHION_MNIST_DEFAULT, "test", n=3)  # the default folder wins when it has the files
    assert len(load_fashion_mnist(split="test")) == 3


@pytest.fixture
def http_root(tmp_path):
    """(folder, url): a local HTTP server on 127.0.0.1 serving folder."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(5)


def serve_all_splits(folder: Path, monkeypatch) -> dict[str, np.ndarray]:
    """Write the four tiny .gz files into folder and point the checksum constants at them."""
    arrays = {}
    for split, n in (("train", 6), ("test", 3)):
        x, y = write_split(folder, split, n=n, gz=True, seed=n)
        for name, arr in zip(FASHION_MNIST_FILES[split], (x, y)):
            monkeypatch.setitem(images.FASHION_MNIST_SHA256, name, hashlib.sha256(idx_bytes(arr)).hexdigest())
            arrays[name] = arr
    return arrays


def test_download_from_local_server(tmp_path, http_root, monkeypatch):
    folder, url = http_root
    arrays = serve_all_splits(folder, monkeypatch)
    with pytest.raises(DataError):
        load_fashion_mnist(split="test", base_url=url)  # download not allowed
    data = load_fashion_mnist(split="test", download=True, base_url=url)
    assert data.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    cache = tmp_path / "cache" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for names in FASHION_MNIST_FILES.values()
                                                              for n in names)
    for p in folder.iterdir():  # now served from the cache, no network needed
        p.unlink()
    assert len(load_fashion_mnist(split="train")) == 6


def test_download_into_explicit_cache_dir(tmp_path, http_root, monkeypatch):
    folder, url = http_root
    serve_all_splits(folder, monkeypatch)
    data = load_fashion_mnist(split="train", download=True, cache_dir=tmp_path / "mine", base_url=url)
    assert len(data) == 6 and (tmp_path / "mine" / "train-images-idx3-ubyte.gz").is_file()


def test_checksum_mismatch_deletes_download(tmp_path, http_root, monkeypatch):
    folder, url = http_root
    serve_all_splits(folder, monkeypatch)
    monkeypatch.setitem(images.FASHION_MNIST_SHA256, "train-labels-idx1-ubyte", "0" * 64)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz.*SHA-256"):
        load_fashion_mnist(split="train", download=True, base_url=url)
    cache = tmp_path / "cache" / "fashion-mnist"
    assert not (cache / "train-labels-idx1-ubyte.gz").exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]


def test_download_http_error_is_data_error(http_root, monkeypatch):
    folder, url = http_root  # serves nothing: 404
    with pytest.raises(DataError, match="downloading http://127.0.0.1"):
        load_fashion_mnist(split="test", download=True, base_url=url)


def test_checksum_constants_are_hex_sha256():
    assert set(images.FASHION_MNIST_SHA256) == {n for names in FASHION_MNIST_FILES.values() for n in names}
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in images.FASHION_MNIST_SHA256.values())


def test_real_fashion_mnist_test_split(monkeypatch):
    real = Path("/usr/share/datasets/fashion-mnist")
    if not (real / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{real} is absent (install Debian's dataset-fashion-mnist package to run this test)")
    data = load_fashion_mnist(real, "test")
    assert data.x.shape == (10000, 1, 28, 28) and data.num_classes == 10
    assert torch.bincount(data.labels).tolist() == [1000] * 10
    assert -1.0 <= data.x.min() < data.x.max() <= 1.0
    digest = hashlib.sha256(gzip.decompress((real / "t10k-labels-idx1-ubyte.gz").read_bytes())).hexdigest()
    assert digest == images.FASHION_MNIST_SHA256["t10k-labels-idx1-ubyte"]

    # The shipped classifier's accuracy on the real test images (the class_accuracy metric of guided evaluation):
    # high against the true labels, at chance against labels shifted by one class.
    from progdistill.evaluation.classifier import class_accuracy, load_classifier

    x, y = data.x[:2000], data.labels[:2000]
    clf = load_classifier()
    assert class_accuracy(x, y, clf) > 0.85
    assert class_accuracy(x, (y + 1) % 10, clf) < 0.2


# ---------------------------------------------------------------------------------------------------------- CIFAR-10


def write_cifar(folder: Path, names, n: int = 4, protocol: int = 2) -> dict[str, np.ndarray]:
    """Tiny CIFAR-10 batches (dicts with bytes keys, as the official files) pickled into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, name in enumerate(names):
        data = np.random.default_rng(k).integers(0, 256, size=(n, 3072), dtype=np.uint8)
        batch = {b"batch_label": b"tiny", b"labels": [(k + i) % 10 for i in range(n)], b"data": data,
                 b"filenames": [b"img%d.png" % i for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        out[name] = data
    return out


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_test_split(tmp_path, protocol):
    raw = write_cifar(tmp_path / "cifar-10-batches-py", ["test_batch"], n=3, protocol=protocol)
    data = load_cifar10(tmp_path, "test")
    assert data.x.shape == (3, 3, 32, 32) and data.x.dtype == torch.float32
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == [0, 1, 2]
    expected = torch.from_numpy(raw["test_batch"].reshape(3, 3, 32, 32)).float() / 127.5 - 1
    torch.testing.assert_close(data.x, expected)


def test_cifar10_numpy1_module_names(tmp_path):
    # Files pickled under numpy 1 (as the official batches) name numpy.core.multiarray, not numpy._core.multiarray.
    write_cifar(tmp_path, ["test_batch"], n=2, protocol=2)
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in path.read_bytes()
    assert load_cifar10(tmp_path, "test").x.shape == (2, 3, 32, 32)


def test_cifar10_train_concatenates_five_batches(tmp_path):
    write_cifar(tmp_path, [f"data_batch_{i}" for i in range(1, 6)], n=2)
    data = load_cifar10(tmp_path, "train")
    assert len(data) == 10 and data.labels.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]


def test_cifar10_missing_batch_lists_places(tmp_path):
    write_cifar(tmp_path, [f"data_batch_{i}" for i in range(1, 5)], n=2)
    with pytest.raises(DataError, match="data_batch_5") as err:
        load_cifar10(tmp_path, "train")
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="test_batch.*not allowed"):
        load_cifar10(tmp_path, "test")
    assert not marker.exists()
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"labels": [0], b"data": eval}))
    with pytest.raises(DataError, match="builtins.eval is not allowed"):
        load_cifar10(tmp_path, "test")


def test_cifar10_corrupt_and_wrong_shape(tmp_path):
    write_cifar(tmp_path, ["test_batch"], n=2)
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(tmp_path, "test")
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"uint8 \[N, 3072\]"):
        load_cifar10(tmp_path, "test")


# ------------------------------------------------------------------------------------------------------ image folder


def save_image(path: Path, w: int, h: int, colour=(0, 255, 0), fmt=None):
    """A w x h image: the central h x h square in `colour`, the sides red (left) and blue (right)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, :] = (0, 0, 255)
    arr[:, : (w - min(w, h)) // 2] = (255, 0, 0)
    left, top = (w - min(w, h)) // 2, (h - min(w, h)) // 2
    arr[top : top + min(w, h), left : left + min(w, h)] = colour
    Image.fromarray(arr).save(path, format=fmt)


def test_image_folder_with_class_subfolders(tmp_path):
    save_image(tmp_path / "dogs" / "b.png", 30, 10)
    save_image(tmp_path / "cats" / "a.jpg", 10, 30, colour=(255, 255, 255))
    save_image(tmp_path / "cats" / "deeper" / "c.bmp", 20, 20)
    save_image(tmp_path / "birds" / "d.webp", 40, 16)
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path, 8)
    assert data.x.shape == (4, 3, 8, 8) and data.x.dtype == torch.float32
    # sorted paths: birds/d, cats/a, cats/deeper/c, dogs/b; classes sorted: birds 0, cats 1, dogs 2
    assert data.labels.tolist() == [0, 1, 1, 2]
    assert data.x.min() >= -1 and data.x.max() <= 1
    green = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 8, 8)
    torch.testing.assert_close(data.x[3], green, atol=0.05, rtol=0)  # 30x10 centre-cropped: the sides are gone
    assert data.x[1].mean() > 0.95  # JPEG (lossy, colour bleeds a little), 10x30: only the white centre is kept


def test_image_folder_flat_grayscale(tmp_path):
    save_image(tmp_path / "x.png", 17, 9)
    save_image(tmp_path / "sub" / "y.gif", 9, 9)
    data = load_image_folder(tmp_path, 5, channels=1)
    assert data.x.shape == (2, 1, 5, 5) and data.labels is None


def test_image_folder_corrupt_and_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_image_folder(tmp_path / "empty", 8)
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere", 8)
    save_image(tmp_path / "imgs" / "good.png", 12, 12)
    (tmp_path / "imgs" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(DataError, match="bad.png"):
        load_image_folder(tmp_path / "imgs", 8)
    (tmp_path / "imgs" / "bad.png").unlink()
    good = (tmp_path / "imgs" / "good.png").read_bytes()
    (tmp_path / "imgs" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="cut.png"):
        load_image_folder(tmp_path / "imgs", 8)


# ---------------------------------------------------------------------------------------------------------- dispatch


def test_load_image_dataset_dispatch(tmp_path):
    with pytest.raises(DataError, match="fashion-mnist, cifar10, folder"):
        load_image_dataset("mnist", None)
    write_split(tmp_path / "fm", "test", n=2)
    assert load_image_dataset("fashion-mnist", str(tmp_path / "fm"), split="test").x.shape == (2, 1, 28, 28)
    with pytest.raises(DataError, match="28x28"):
        load_image_dataset("fashion-mnist", str(tmp_path / "fm"), split="test", image_size=32)
    write_cifar(tmp_path / "c", ["test_batch"], n=2)
    assert load_image_dataset("cifar10", str(tmp_path / "c"), split="test").x.shape == (2, 3, 32, 32)
    with pytest.raises(DataError, match="root"):
        load_image_dataset("cifar10", None)
    save_image(tmp_path / "imgs" / "a.png", 6, 6)
    assert load_image_dataset("folder", str(tmp_path / "imgs"), image_size=4).x.shape == (1, 3, 4, 4)
    with pytest.raises(DataError, match="image_size"):
        load_image_dataset("folder", str(tmp_path / "imgs"))
