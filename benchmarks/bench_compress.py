"""Per-chunk compression of weights-like data: replicate's policy (bg4-zstd for float-like
chunks, zstd-1 otherwise, raw under 3%) against zstd-1 on the whole chunk, the baseline, in
the same run. Single thread, CPU time, content-defined chunks of 256 MiB of each kind.

Usage::

    .venv/bin/python benchmarks/bench_compress.py            # about 1 minute
    .venv/bin/python benchmarks/bench_compress.py --mib 64   # a quick look

Prints, per kind: stored size as a share of the input (lower is better) and CPU-seconds per
GiB to encode (into a reused buffer, as ingest does; bg4 with a probe per chunk) and to decode,
for both.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replicate.objects import chunker, compress  # noqa: E402


def kinds(n: int) -> dict[str, bytes]:
    g = np.random.default_rng(0)
    w = g.standard_normal(n // 4, dtype=np.float32)
    return {
        "fp32 N(0,1)": w.tobytes(),
        "fp32 N(0,0.02)": (w * np.float32(0.02)).tobytes(),
        "fp16": np.concatenate([w, w]).astype(np.float16).tobytes(),
        "bf16": np.concatenate([w, w]).view(np.uint32).__rshift__(16).astype(np.uint16).tobytes(),
        "fp64": g.standard_normal(n // 8).tobytes(),
        "int8 (quantized)": np.clip(np.concatenate([w] * 4) * 30, -127, 127).astype(np.int8).tobytes(),
    }  # fmt: skip


class Timer:
    """CPU time of the block."""

    def __enter__(self) -> Timer:
        self.t = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.process_time() - self.t


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mib", type=int, default=256, help="input size per kind (default 256)")
    args = ap.parse_args()
    n = args.mib << 20
    z1 = zstandard.ZstdCompressor(level=1)
    print(
        f"{'kind':18} | {'replicate: stored':>17} {'enc s/GiB':>9} {'dec s/GiB':>9} | "
        f"{'zstd-1: stored':>14} {'enc s/GiB':>9} {'dec s/GiB':>9}"
    )
    for name, data in kinds(n).items():
        chunks = [bytes(c) for c in chunker.cut(data)]
        gib = len(data) / 2**30
        # Encoding: into one reused buffer, as the ingest pipeline does (keeping every
        # result would also time page faults of fresh memory, 0.4 s/GiB on this VM).
        out = np.empty((1 << 20) + compress.ENCODE_SLACK, np.uint8)
        with Timer() as t_enc:
            for c in chunks:
                compress.encode_into(c, out)
        with Timer() as z_enc:
            for c in chunks:
                z1.compress(c)
        enc = [compress.compress(c) for c in chunks]
        with Timer() as t_dec:
            for (c, s), r in zip(enc, chunks):
                compress.decompress(c, s, len(r))
        ours = sum(len(s) for _, s in enc) / len(data)
        zs = [z1.compress(c) for c in chunks]
        with Timer() as z_dec:
            for s, r in zip(zs, chunks):
                compress.decompress(compress.ZSTD, s, len(r))
        theirs = sum(len(s) for s in zs) / len(data)
        codecs = sorted({compress.CODEC_NAMES[c] for c, _ in enc})
        print(
            f"{name:18} | {ours:16.1%} {t_enc.seconds / gib:9.2f} {t_dec.seconds / gib:9.2f} | "
            f"{theirs:13.1%} {z_enc.seconds / gib:9.2f} {z_dec.seconds / gib:9.2f}   ({', '.join(codecs)})"
        )


if __name__ == "__main__":
    main()
