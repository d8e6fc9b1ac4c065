#!/usr/bin/env python3
"""Caption quality at scale: scoring N images x R references of synthetic captions, and reading a
references file the size of Karpathy's dataset_coco.json.

    python3 bench/bench_evaluation.py [--images 5000] [--references 5] [--karpathy-images 123287] [--worst-case]

Captions are 8-14 words drawn from a small word list, in COCO's style (capitalised, a full stop).
Reported: the time of the PTB tokenizer alone (both sides), of the whole score() (tokenizer, BLEU,
METEOR, ROUGE-L, CIDEr-D), and the peak RSS of this process and of its largest child (Java); then the
time and peak RSS of read_references on a dataset_coco.json-like file (in a process of its own); then,
with --worst-case, how far the peak grows, as a multiple of the file, while reading files just under the
256 MB bound made of the smallest entries each format allows (one-word captions), the worst case per byte.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.evaluation.pycoco import require_evaluation, tokenize  # noqa: E402
from utils.evaluation.scoring import score  # noqa: E402

WORDS = ["a", "an", "the", "man", "woman", "child", "dog", "cat", "horse", "sitting", "standing", "walking",
         "riding", "holding", "on", "in", "at", "with", "near", "next", "to", "table", "street", "field", "grass",
         "beach", "bus", "train", "plate", "red", "blue", "white", "green", "two", "three", "people", "group", "of",
         "skateboard", "umbrella", "kitchen"]


def caption(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14))).capitalize() + "."


def peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def bench_scoring(images: int, references: int) -> None:
    rng = random.Random(0)
    pairs = {f"COCO_val2014_{i:012d}.jpg": (caption(rng), [caption(rng) for _ in range(references)])
             for i in range(images)}
    start = time.perf_counter()
    tokenize({k: refs for k, (_, refs) in pairs.items()})
    tokenize({k: [c] for k, (c, _) in pairs.items()})
    tokenized = time.perf_counter() - start
    start = time.perf_counter()
    scores = score(pairs)
    scored = time.perf_counter() - start
    print(f"scoring {images} images x {references} references: tokenizer alone {tokenized:.1f} s, "
          f"score() {scored:.1f} s; peak RSS: this process {peak_mb(resource.RUSAGE_SELF):.0f} MB, "
          f"largest child (Java) {peak_mb(resource.RUSAGE_CHILDREN):.0f} MB")
    print("  " + ", ".join(f"{k} {v:.3f}" for k, v in scores.corpus.items()))


def bench_reading(karpathy_images: int) -> None:
    rng = random.Random(1)
    entries = []
    for i in range(karpathy_images):
        sentences = []
        for k in range(5):
            raw = caption(rng)
            sentences.append({"tokens": raw.lower().rstrip(".").split(), "raw": raw, "imgid": i, "sentid": 5 * i + k})
        entries.append({"filepath": "val2014", "sentids": list(range(5 * i, 5 * i + 5)),
                        "filename": f"COCO_val2014_{i:012d}.jpg", "imgid": i, "sentences": sentences,
                        "split": rng.choice(["train", "val", "test", "restval"]), "cocoid": i})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "dataset_coco.json"
        path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
        del entries
        child = ("import resource, sys, time; sys.path.insert(0, sys.argv[2]); "
                 "from utils.evaluation.references import read_references; t = time.perf_counter(); "
                 "r = read_references(__import__('pathlib').Path(sys.argv[1]), 'test'); "
                 "print(f'{len(r.images)} test images, {time.perf_counter() - t:.1f} s, '"
                 "f'peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB')")
        out = subprocess.run([sys.executable, "-c", child, str(path), str(ROOT)], capture_output=True, text=True,
                             check=True).stdout.strip()
        print(f"reading a {path.stat().st_size / 1e6:.0f} MB dataset_coco.json-like file, --split test: {out}")


ONE_WORD = ("cat", "dog", "bird", "car", "tree")
WORST_CASE_BYTES = 250 * 2**20


def worst_table(file: Path) -> None:
    with file.open("w", encoding="utf-8") as out:
        out.write("image,caption\n")
        i = 0
        while out.tell() < WORST_CASE_BYTES:
            out.write("".join(f"COCO_val2014_{j:012d}.jpg,{ONE_WORD[j % 5]}\n" for j in range(i, i + 10_000)))
            i += 10_000


def worst_coco(file: Path) -> None:
    images = WORST_CASE_BYTES // 345  # each image: about 62 bytes, and five annotations of about 56
    with file.open("w", encoding="utf-8") as out:
        out.write('{"images": [')
        out.write(", ".join(f'{{"id": {i}, "file_name": "COCO_val2014_{i:012d}.jpg"}}' for i in range(images)))
        out.write('], "annotations": [')
        for start in range(0, 5 * images, 100_000):
            out.write(", " if start else "")
            out.write(", ".join(f'{{"image_id": {i // 5}, "id": {i}, "caption": "{ONE_WORD[i % 5]}"}}'
                                for i in range(start, min(start + 100_000, 5 * images))))
        out.write("]}")


def bench_worst_case() -> None:
    child = ("import re, sys; sys.path.insert(0, sys.argv[2]); from pathlib import Path; "
             "from utils.evaluation.references import read_references; "
             "hwm = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text())[1]) * 1024; "
             "base = hwm(); r = read_references(Path(sys.argv[1])); print(len(r.images), hwm() - base)")
    with tempfile.TemporaryDirectory() as folder:
        for name, make in (("CSV, one-word captions", worst_table), ("COCO JSON, one-word captions", worst_coco)):
            path = Path(folder) / "refs"
            make(path)
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", child, str(path), str(ROOT)], capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"reading {name} failed: {proc.stderr[-500:]}")
            images, growth = proc.stdout.split()
            size = path.stat().st_size
            print(f"{name}: {size / 2**20:.0f} MB, {int(images)} images, {time.perf_counter() - start:.1f} s; "
                  f"peak grows by {int(growth) / 2**20:.0f} MB, {int(growth) / size:.1f} times the file")
            path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--references", type=int, default=5)
    parser.add_argument("--karpathy-images", type=int, default=123287)
    parser.add_argument("--worst-case", action="store_true", help="also read 250 MB files of one-word captions")
    args = parser.parse_args()
    require_evaluation("bench_evaluation")
    if args.images:
        bench_scoring(args.images, args.references)
    if args.karpathy_images:
        bench_reading(args.karpathy_images)
    if args.worst_case:
        bench_worst_case()


if __name__ == "__main__":
    main()
