#!/usr/bin/env python3
"""Unigram baseline of a prepared data directory: the validation cross-entropy
(nats/token, the unit of ferry's losses) of the token frequencies counted on
the training split (add-one smoothed). A model that learned nothing about
context cannot beat it.

    tools/unigram_baseline.py DATA_DIR     (train-*.bin and val-*.bin shards)
"""
import glob
import math
import struct
import sys

import numpy as np


def read_shard(path):
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:8] != b"FERRYTOK":
            sys.exit(f"{path}: not a ferry token shard")
        _version, width, vocab, _hsize = struct.unpack_from("<4I", head, 8)
        (n,) = struct.unpack_from("<Q", head, 24)
        data = np.frombuffer(f.read(n * width), dtype=np.uint16 if width == 2 else np.uint32)
    return data.astype(np.int64), vocab


def split(data_dir, name):
    parts = [read_shard(p) for p in sorted(glob.glob(f"{data_dir}/{name}-*.bin"))]
    if not parts:
        sys.exit(f"{data_dir}: no {name}-*.bin shards")
    return np.concatenate([p[0] for p in parts]), parts[0][1]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    train, vocab = split(sys.argv[1], "train")
    val, _ = split(sys.argv[1], "val")
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    ce = -logp[val].mean()
    print(f"unigram baseline: {ce:.4f} nats/token on {len(val)} validation tokens "
          f"(vocab {vocab}, uniform would be {math.log(vocab):.4f})")


if __name__ == "__main__":
    main()
