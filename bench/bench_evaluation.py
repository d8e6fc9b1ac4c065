#!/usr/bin/env python3
"""Caption quality at scale: scoring N images x R references of synthetic captions, and reading a
references file the size of Karpathy's dataset_coco.json.

    python3 bench/bench_evaluation.py [--images 5000] [--references 5] [--karpathy-images 123287]

Captions are 8-14 words drawn from a small word list, in COCO's style (capitalised, a full stop).
Reported: the time of the PTB tokenizer alone (both sides), of the whole score() (tokenizer, BLEU,
METEOR, ROUGE-L, CIDEr-D), and the peak RSS of this process and of its largest child (Java); then the
time and peak RSS of read_references on a dataset_coco.json-like file (in a process of its own).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--references", type=int, default=5)
    parser.add_argument("--karpathy-images", type=int, default=123287)
    args = parser.parse_args()
    require_evaluation("bench_evaluation")
    bench_scoring(args.images, args.references)
    if args.karpathy_images:
        bench_reading(args.karpathy_images)


if __name__ == "__main__":
    main()
