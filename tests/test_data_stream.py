"""Streaming data: the sharded, resumable global-batch sampler, the DataLoader stream, the folder cache (built once,
rebuilt on change, grayscale) and a training run on 20 000 images whose memory stays far below the float32 data."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image  # a hard dependency (pyproject): a missing install must fail, not skip
from safetensors.torch import load_file

from progdistill.config import ConfigError, load_config
from progdistill.data import ExampleData, GlobalBatchSampler, make_batches
from progdistill.data import cache as cache_mod
from progdistill.data.images import load_image_folder
from progdistill.training.teacher import train_teacher

@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROGDISTILL_CACHE", str(tmp_path / "cache"))


def write_folder(root: Path, n: int, size: int = 8, seed: int = 0, classes: int = 0) -> None:
    """n random size x size RGB PNGs (in `classes` sub-folders when > 0)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        folder = root / f"c{i % classes}" if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i]).save(folder / f"{i:06d}.png", compress_level=0)


def _take(it, k):
    return [next(it) for _ in range(k)]


# ------------------------------------------------------------------------------------------------------- sampler


def test_shards_of_every_global_batch_are_the_one_process_batch():
    one = iter(GlobalBatchSampler(50, 12, seed=3, flip=True))
    two = [iter(GlobalBatchSampler(50, 12, seed=3, rank=r, world=2, flip=True)) for r in range(2)]
    seen = []
    for _ in range(9):  # 4 batches per epoch (2 examples dropped): crosses two epoch boundaries
        whole = next(one)
        assert next(two[0]) + next(two[1]) == whole
        seen += [i for i, _ in whole]
    epoch0 = seen[:48]
    assert len(set(epoch0)) == 48 and set(epoch0) <= set(range(50))  # a permutation without repeats per epoch
    assert seen[48:96] != epoch0  # a new order every epoch
    flips = [f for _, f in whole]
    assert any(flips) and not all(flips)


def test_resuming_at_a_position_continues_the_same_stream():
    full = _take(iter(GlobalBatchSampler(50, 12, seed=1, flip=True)), 11)
    sampler = GlobalBatchSampler(50, 12, seed=1, flip=True)
    state = sampler.state_dict(6)
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 2)
    sampler.start = sampler.check_state(json.loads(json.dumps(state)))  # as stored in a checkpoint record
    assert _take(iter(sampler), 5) == full[6:]
    with pytest.raises(ValueError, match="num_examples"):
        GlobalBatchSampler(60, 12, seed=1).check_state(state)
    with pytest.raises(ValueError, match="divisible"):
        GlobalBatchSampler(50, 12, seed=1, rank=0, world=5)


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_is_uint8_scaled_per_batch_and_resumes_exactly(workers):
    images = np.random.default_rng(0).integers(0, 256, size=(40, 3, 4, 4), dtype=np.uint8)
    data = ExampleData(images, np.arange(40) % 3, flip=True)
    assert data.is_uint8 and data.example_shape == (3, 4, 4) and data.nbytes_float32 == 40 * 48 * 4
    stream = make_batches(data, 8, seed=5, workers=workers)
    batches = _take(stream, 7)
    state = stream.state_dict()
    stream.close()
    x, labels = batches[0]
    assert x.dtype == torch.float32 and x.shape == (8, 3, 4, 4) and -1 <= x.min() < x.max() <= 1
    # Every row is one image, scaled x / 127.5 - 1, mirrored or not, with its own label.
    ref = torch.from_numpy(images).float() / 127.5 - 1
    for row, label in zip(x, labels):
        i = next(i for i in range(40) if torch.equal(row, ref[i]) or torch.equal(row, ref[i].flip(-1)))
        assert label == i % 3
    resumed = make_batches(data, 8, seed=5, workers=workers, state=state)
    reference = make_batches(data, 8, seed=5, workers=0)
    for (a, la), (b, lb) in zip(_take(resumed, 4), _take(reference, 11)[7:]):
        assert torch.equal(a, b) and torch.equal(la, lb)
    resumed.close()


# ---------------------------------------------------------------------------------------------------- folder cache


def test_folder_cache_built_once_and_rebuilt_on_change(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    write_folder(root, 10, size=6, classes=2)
    builds = []
    real = cache_mod.build
    monkeypatch.setattr(cache_mod, "build", lambda *a, **k: builds.append(1) or real(*a, **k))
    first = load_image_folder(root, 6, progress=False)
    assert isinstance(first.images, np.memmap) and first.images.shape == (10, 3, 6, 6)
    assert first.labels.tolist() == [0] * 5 + [1] * 5
    expected = np.asarray(Image.open(root / "c1" / "000003.png")).transpose(2, 0, 1)
    assert np.array_equal(first.images[6], expected)  # sorted paths: c0/0, 2, 4, 6, 8, then c1/1, 3, ...
    assert len(builds) == 1
    load_image_folder(root, 6, progress=False)
    assert len(builds) == 1  # unchanged folder: the cache is reused
    # Replace one image (new content, new mtime): rebuilt, and the new pixels are served.
    new = np.full((6, 6, 3), 7, np.uint8)
    Image.fromarray(new).save(root / "c0" / "000000.png")
    os.utime(root / "c0" / "000000.png", ns=(1, 1))
    changed = load_image_folder(root, 6, progress=False)
    assert len(builds) == 2 and np.array_equal(changed.images[0], new.transpose(2, 0, 1))
    write_folder(root / "c0" / "more", 1, size=6, seed=9)  # one image added
    assert len(load_image_folder(root, 6, progress=False)) == 11 and len(builds) == 3
    # Another size or channel count is another cache; the old one stays valid.
    gray = load_image_folder(root, 4, channels=1, progress=False)
    assert gray.images.shape == (11, 1, 4, 4) and len(builds) == 4
    load_image_folder(root, 6, progress=False)
    assert len(builds) == 4
    # A damaged cache (the images file cut short) is detected and rebuilt, never served.
    directory = cache_mod.folder_cache_dir(root, 6, 3)
    npy = directory / json.loads((directory / "manifest.json").read_text())["images"]
    npy.write_bytes(npy.read_bytes()[:-5])
    assert len(load_image_folder(root, 6, progress=False)) == 11 and len(builds) == 5
    assert len(list(directory.glob("images-*.npy"))) == 1 and not list(directory.glob(".*part"))


def test_parallel_cache_build_matches_serial(tmp_path):
    write_folder(tmp_path / "imgs", 600, size=5)
    a = np.array(load_image_folder(tmp_path / "imgs", 5, workers=1, progress=False).images)
    for d in (tmp_path / "cache" / "folders").iterdir():
        (d / "manifest.json").unlink()
    b = load_image_folder(tmp_path / "imgs", 5, workers=2, progress=False).images  # 3 chunks over 2 processes
    assert np.array_equal(a, b)


def test_data_channels_config(tmp_path):
    write_folder(tmp_path / "imgs", 4, size=6)
    cfg = load_config(None, ['data.name="folder"', f'data.root="{tmp_path / "imgs"}"', "data.image_size=6",
                             "data.channels=1", 'model.arch="unet"'])
    from progdistill.build import load_data

    data = load_data(cfg, progress=False)
    assert data.example_shape == (1, 6, 6)
    rgb = np.asarray(Image.open(tmp_path / "imgs" / "000002.png").convert("L"))
    assert np.array_equal(data.images[2, 0], rgb)
    for bad, match in (("data.channels=2", "1 \\(grayscale\\), 3 \\(RGB\\)"), ("data.workers=-1", "data.workers")):
        with pytest.raises(ConfigError, match=match):
            load_config(None, ['data.name="folder"', 'data.root="x"', "data.image_size=6", 'model.arch="unet"', bad])
    with pytest.raises(ConfigError, match="fashion-mnist images have 1 channel"):
        load_config("fashion_mnist", ["data.channels=3"])


# -------------------------------------------------------------------------------------------------------- training

TINY_UNET = ['model.arch="unet"', 'model.unet="small"', 'device="cpu"', "train.ema_decay=0", "train.warmup=0"]


def test_image_run_resumes_exactly_with_workers(tmp_path):
    write_folder(tmp_path / "imgs", 40, size=8, classes=2)
    sets = ['data.name="folder"', f'data.root="{tmp_path / "imgs"}"', "data.image_size=8", "data.flip=true",
            "data.workers=2", "train.batch_size=12", "train.steps=6", "train.checkpoint_every=2",
            "train.keep_checkpoints=5", "train.ema_decay=0.9", *TINY_UNET[:3]]
    cfg = load_config(None, sets)
    full = tmp_path / "full"
    train_teacher(cfg, full, progress=False)
    record = json.loads((full / "checkpoints" / "teacher_step00000004.json").read_text())
    assert record["data_state"]["position"] == 4 and record["data_state"]["epoch"] == 1  # 3 batches per epoch
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    for suffix in (".json", ".safetensors"):
        name = f"teacher_step00000004{suffix}"
        (resumed / "checkpoints" / name).write_bytes((full / "checkpoints" / name).read_bytes())
    # Resumed with another worker count (allowed: the sampler, not the workers, decides the batches).
    train_teacher(load_config(None, [*sets, "data.workers=0"]), resumed, progress=False, resume=True)
    with pytest.raises(ConfigError, match="only data.workers may differ"):
        train_teacher(load_config(None, [*sets, "train.steps=7"]), resumed, progress=False, resume=True)
    a, b = load_file(full / "teacher.safetensors"), load_file(resumed / "teacher.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


MEMORY_RUN = textwrap.dedent("""
    import json, re, sys
    import psutil
    from progdistill.config import load_config
    from progdistill.training.teacher import train_teacher
    from progdistill.build import load_data

    def config(root):
        return load_config(None, [
            'data.name="folder"', f'data.root="{root}"', 'data.image_size=32', 'data.workers=2', 'model.arch="unet"',
            'model.unet="small"', 'device="cpu"', 'train.steps=3', 'train.batch_size=8', 'train.ema_decay=0',
            'train.warmup=0'])

    small, big, out = sys.argv[1:4]
    # A warm-up run on a few images first: what training itself costs (lazily loaded libraries, allocator pools,
    # the network and Adam) is then already in the baseline, and the growth below is what the data costs.
    train_teacher(config(small), out + "/warm", progress=False)
    # The peak is this process's VmHWM, reset here ("5" > clear_refs). Not ru_maxrss: Linux carries that over exec
    # from the forked parent, so a child of a large pytest worker starts with the worker's peak (in a full suite that
    # read as 0.1 to 1.5 GiB of "growth" that this process never had).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = psutil.Process().memory_info().rss
    train_teacher(config(big), out + "/big", progress=False)
    with open("/proc/self/status") as f:
        peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1)) * 1024
    data = load_data(config(big), progress=False)
    print(json.dumps({"before": before, "peak": peak, "float32": data.nbytes_float32, "n": len(data)}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc/self/status")
def test_training_on_20000_images_stays_far_below_the_float32_data(tmp_path):
    write_folder(tmp_path / "small", 16, size=8)
    write_folder(tmp_path / "big", 20_000, size=8)  # resized to 32x32 by the cache: 246 MB as float32
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROGDISTILL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", MEMORY_RUN, str(tmp_path / "small"), str(tmp_path / "big"),
                           str(tmp_path / "runs")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    assert m["n"] == 20_000 and m["float32"] == 20_000 * 3 * 32 * 32 * 4
    growth = m["peak"] - m["before"]
    # Holding the data as float32 (as before) would add the whole 234 MiB on top of everything else, a uint8 copy
    # 59 MiB; streaming from the memory-mapped cache grows the peak by about 10 MiB. The bound is the uint8 size.
    assert growth < 0.25 * m["float32"], f"peak RSS grew by {growth / 2**20:.0f} MiB (float32 data: " \
                                         f"{m['float32'] / 2**20:.0f} MiB)"
