"""What checking every image whole costs when a dataset is loaded (apis.data.image_files), on DSB and at COCO scale.

For each image set, times ``apis.data.image_files.check_image_files`` over all its files with each of ``--threads``
(default 1 and 2): first with an empty cache (every image decoded whole: what the first ``apis run`` on a dataset
pays), then again with that cache filled (what every later start pays: each file's ``stat`` and one read of the
cache). Each thread count gets a fresh cache in a temporary folder, so the user's is neither used nor changed.
Every file is read once before the timings, so they are of decoding, not of the disk (a first run on COCO also
reads its 18 GB from disk once).

Image sets:

* ``--json FILE`` (repeatable): the images of a COCO json, e.g. DSB2018's train and val;
* ``--stand-in N``: N generated JPEGs standing in for COCO train2017 (no COCO image is on disk here): 640x480 RGB
  (COCO's most common size), a smooth multi-scale texture with a few sharp-edged shapes and fine grain, saved at
  JPEG quality 90 with 4:2:0 chroma subsampling, about 150 KB each like COCO's (train2017 is 18 GB for 118,287
  images). Made once in ``--workdir`` and reused. Their cost is extrapolated linearly to the 123,287 images
  ``apis run`` checks on COCO (train2017 and val2017): an extrapolation from N files, not a measurement of COCO.

Prints a markdown table and writes a record (``bench/records.py``) to ``--record``:

    nice -n 10 .venv/bin/python bench/bench_image_check.py \\
        --json /work/shared/data/dsb2018_nuclei/annotations/train.json \\
        --json /work/shared/data/dsb2018_nuclei/annotations/val.json --stand-in 3000 --record results/image_check.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from records import add_record_option, provenance, save

COCO_IMAGES = 118_287 + 5_000  # train2017 + val2017: both are checked when `apis run` loads them
COCO_MEAN_KB = 18e9 / 118_287 / 1e3  # train2017: 18 GB for 118,287 images
STAND_IN_SIZE = (640, 480)
STAND_IN_QUALITY = 90
TEXTURES, TEXTURE_SIZE = 8, 1024


def stand_in_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs standing in for COCO's (see the module docstring), made once in ``folder``."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:06d}.jpg" for i in range(count)]
    missing = [path for path in paths if not path.exists()]
    if not missing:
        return paths
    rng = np.random.default_rng(seed)
    textures = [_texture(rng) for _ in range(TEXTURES)]
    grain = rng.normal(0.0, 24.0, (TEXTURE_SIZE, TEXTURE_SIZE, 3)).astype(np.float32)
    width, height = STAND_IN_SIZE
    for path in missing:
        y, x = rng.integers(0, TEXTURE_SIZE - height, 2), rng.integers(0, TEXTURE_SIZE - width, 2)
        pixels = (textures[rng.integers(TEXTURES)][y[0]:y[0] + height, x[0]:x[0] + width] * 40
                  + rng.uniform(60, 190, 3) + grain[y[1]:y[1] + height, x[1]:x[1] + width])
        picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        for _ in range(rng.integers(3, 12)):
            x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
            draw.ellipse((x0, y0, x0 + rng.integers(10, 200), y0 + rng.integers(10, 200)),
                         fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        partial = path.with_suffix(".partial")
        picture.save(partial, format="JPEG", quality=STAND_IN_QUALITY, subsampling="4:2:0")
        partial.rename(path)
    return paths


def _texture(rng: np.random.Generator) -> np.ndarray:
    """A smooth texture with detail at every scale (noise octaves, coarser ones stronger), zero mean, unit spread."""
    from PIL import Image

    out = np.zeros((TEXTURE_SIZE, TEXTURE_SIZE, 3), np.float32)
    for octave in range(3, 10):
        cells = 2 ** octave
        noise = rng.normal(0.0, 1.0, (cells, cells, 3)).astype(np.float32)
        for channel in range(3):
            layer = Image.fromarray(noise[..., channel], mode="F").resize((TEXTURE_SIZE, TEXTURE_SIZE), Image.BICUBIC)
            out[..., channel] += np.asarray(layer) * (TEXTURE_SIZE / cells) ** 0.9
    return (out - out.mean()) / out.std()


def json_images(json_path: Path) -> list[Path]:
    from apis.data.coco import load_coco

    return [record.path for record in load_coco(json_path, check_images=False).images]


def time_checks(paths: list[Path], threads: int) -> tuple[float, float]:
    """Seconds to check ``paths`` with an empty cache, then with the cache that check filled."""
    from apis.data.image_files import CACHE_ENV, ImageFacts, check_image_files

    seconds = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ[CACHE_ENV] = cache
        for _ in ("empty cache", "filled cache"):
            start = time.perf_counter()
            checked = check_image_files(paths, workers=threads)
            seconds.append(time.perf_counter() - start)
            failed = [(path, result) for path, result in zip(paths, checked) if not isinstance(result, ImageFacts)]
            if failed:
                raise SystemExit(f"{failed[0][0]}: {failed[0][1]} ({len(failed)} images failed the check)")
    return seconds[0], seconds[1]


def load_average() -> list[float]:
    return [float(value) for value in Path("/proc/loadavg").read_text().split()[:3]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, action="append", default=[], help="a COCO json whose images to check")
    parser.add_argument("--stand-in", type=int, default=0, metavar="N", help="N generated COCO-like JPEGs")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "apis_image_check")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    add_record_option(parser, "image_check")
    args = parser.parse_args()
    started = provenance()
    load_before = load_average()

    sets = {str(path): json_images(path) for path in args.json}
    if args.stand_in:
        sets[f"COCO stand-in ({args.stand_in} generated JPEGs)"] = stand_in_images(args.workdir / "stand_in",
                                                                                   args.stand_in)
    rows = []
    for name, paths in sets.items():
        megabytes = sum(len(path.read_bytes()) for path in paths) / 1e6  # read once: the page cache holds them
        for threads in args.threads:
            first, cached = time_checks(paths, threads)
            row = {"set": name, "images": len(paths), "megabytes": round(megabytes, 1), "threads": threads,
                   "first_s": round(first, 4), "cached_s": round(cached, 4),
                   "first_ms_per_image": round(1e3 * first / len(paths), 2),
                   "cached_ms_per_image": round(1e3 * cached / len(paths), 3)}
            if name.startswith("COCO stand-in"):
                row["mean_kb"] = round(1e3 * megabytes / len(paths), 1)
                row["coco_extrapolated"] = {"images": COCO_IMAGES, "first_s": round(first / len(paths) * COCO_IMAGES),
                                            "cached_s": round(cached / len(paths) * COCO_IMAGES, 1)}
            rows.append(row)
            print(row, flush=True)

    load_after = load_average()
    for row in rows:
        row["load_average"] = {"start": load_before, "end": load_after}
        if "coco_extrapolated" in row:
            row["coco_extrapolated"]["mean_kb"] = round(COCO_MEAN_KB, 1)
    print(f"\nload averages {load_before} -> {load_after} on {os.cpu_count()} CPUs\n")
    print("| images | files | MB | threads | first check s (ms / image) | cached s (ms / image) "
          "| COCO, 123,287 images: first / cached s (extrapolated) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        coco = row.get("coco_extrapolated")
        extrapolated = f"{coco['first_s']:,} / {coco['cached_s']}" if coco else "-"
        print(f"| {row['set']} | {row['images']} | {row['megabytes']} | {row['threads']} | {row['first_s']} "
              f"({row['first_ms_per_image']}) | {row['cached_s']} ({row['cached_ms_per_image']}) | {extrapolated} |")
    save(args.record, "image_check", started, rows, arguments=args)


if __name__ == "__main__":
    main()
