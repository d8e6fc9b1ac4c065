"""Write a full-size benchmark model set with the published file names and shapes (random weights).

    python3 bench/make_models.py OUT_DIR [--vocab-size 9487] [--size 512] [--force]

The real files cannot be downloaded on this project's machines; these stand-ins have the published
interfaces and sizes (docs/models.md §1-§5), so timings measured on them carry over: a Caffe-style ResNet-101
(~170 MB), three 20-step greedy decoders 512 wide over 9487 words, vocab.json, placeholder prototxts.
Files that already exist are kept unless --force is given (the ResNet alone takes a few seconds).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

# tests/stand_in_models.py holds the builders; make the repository root importable when run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.stand_in_models import (  # noqa: E402
    BENCH_EOS_BIAS,
    DECODER_NAMES,
    default_words,
    make_greedy_decoder,
    make_resnet101,
    random_decoder_weights,
    write_prototxt_placeholder,
    write_vocab,
)

STEPS = 20  # the published decoders were traced over the full 20 steps


def _build(path: Path, force: bool, write: Callable[[Path], None]) -> None:
    """Write ``path`` unless it exists; via a temporary name so an interrupted run leaves no partial file."""
    if path.exists() and not force:
        print(f"kept     {path}")
        return
    start = time.perf_counter()
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)
    print(f"wrote    {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="folder to write the model set into")
    parser.add_argument("--vocab-size", type=int, default=9487, help="words V (published: 9487)")
    parser.add_argument("--size", type=int, default=512, help="embedding and LSTM width (published: 512)")
    parser.add_argument(
        "--eos-bias",
        type=float,
        default=BENCH_EOS_BIAS,
        help=f"added to the EOS logit; {BENCH_EOS_BIAS:g} gives ~10-word captions at the published size",
    )
    parser.add_argument("--force", action="store_true", help="rebuild files that already exist")
    args = parser.parse_args(argv)
    if args.vocab_size < 1 or args.size < 1:
        parser.error("--vocab-size and --size must be positive")

    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    onnx_paths = [out / "model_feat.onnx"]
    _build(onnx_paths[0], args.force, make_resnet101)
    for seed, name in enumerate(DECODER_NAMES, start=1):
        path = out / f"model_{name}.onnx"
        onnx_paths.append(path)

        def write_decoder(p: Path, seed: int = seed) -> None:
            w = random_decoder_weights(
                args.vocab_size, embed=args.size, rnn=args.size, seed=seed, eos_bias=args.eos_bias
            )
            make_greedy_decoder(p, w, steps=STEPS)

        _build(path, args.force, write_decoder)
    _build(out / "vocab.json", args.force, lambda p: write_vocab(p, default_words(args.vocab_size)))
    for path in onnx_paths:
        # Tiny text files, written in place.
        if args.force or not Path(f"{path}.prototxt").exists():
            write_prototxt_placeholder(path)
    print(f"model set ready in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
