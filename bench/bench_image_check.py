"""What checking every image whole costs when a dataset is loaded (apis.data.image_files).

Loads a COCO json three times with ``load_coco``: without the image check (``check_images=False``: the json
only), with the check and an empty cache (every image decoded whole, in threads), and again with the cache
filled (nothing decoded). The cache goes to a fresh temporary folder, so the user's is neither used nor
changed. Prints one markdown row.

    .venv/bin/python bench/bench_image_check.py /work/shared/data/dsb2018_nuclei/annotations/train.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from records import add_record_option, provenance, save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, help="a COCO instance json")
    parser.add_argument("--image-root", type=Path, help="default: as load_coco finds it")
    add_record_option(parser, "image_check")
    args = parser.parse_args()
    recording = provenance()

    from apis.data.image_files import CACHE_ENV

    with tempfile.TemporaryDirectory() as cache:
        os.environ[CACHE_ENV] = cache
        from apis.data.coco import load_coco

        seconds = {}
        for name, check in (("json only", False), ("decoded whole, cold cache", True), ("warm cache", True)):
            start = time.perf_counter()
            dataset = load_coco(args.json, args.image_root, check_images=check)
            seconds[name] = time.perf_counter() - start
    files = [record.path for record in dataset.images]
    megabytes = sum(path.stat().st_size for path in files) / 1e6
    print(f"{len(files)} images, {megabytes:.1f} MB, {os.cpu_count()} CPUs; load averages "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print("| images | MB | json only s | decoded whole (cold cache) s | warm cache s | per image ms (cold - json) |")
    print("|---:|---:|---:|---:|---:|---:|")
    per_image = 1000 * (seconds["decoded whole, cold cache"] - seconds["json only"]) / len(files)
    print(f"| {len(files)} | {megabytes:.1f} | {seconds['json only']:.2f} | {seconds['decoded whole, cold cache']:.2f} "
          f"| {seconds['warm cache']:.2f} | {per_image:.1f} |")
    save(args.record, "image_check", recording,
         [{"images": len(files), "megabytes": megabytes, "seconds": seconds, "per_image_ms": per_image,
           "loadavg": Path("/proc/loadavg").read_text().split()[:3]}], arguments=args)


if __name__ == "__main__":
    main()
