"""Checks a model grown by --add-special-tokens against its base, reading
both model.safetensors files with the standard library only: every tensor
but the embedding and lm_head is bit-identical, those keep their old rows
bit for bit, and each new row is the column mean of the old rows (an
independent oracle: math.fsum in exact arithmetic, rounded to float32).
    add_tokens_check.py BASE.safetensors GROWN.safetensors N_NEW"""
import json
import math
import struct
import sys


def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    head.pop("__metadata__", None)
    out = {}
    for name, t in head.items():
        assert t["dtype"] == "F32", (name, t["dtype"])
        a, b = t["data_offsets"]
        out[name] = (t["shape"], data[a:b])
    return out


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def main():
    base, grown, n_new = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
    assert sorted(base) == sorted(grown), "the tensors differ"
    grew = 0
    for name, (shape, raw) in base.items():
        gshape, graw = grown[name]
        if name not in ("model.embed_tokens.weight", "lm_head.weight"):
            assert shape == gshape and raw == graw, name + " changed"
            continue
        V, d = shape
        assert gshape == [V + n_new, d], (name, shape, gshape)
        assert graw[: len(raw)] == raw, name + ": an old row changed"
        old = struct.unpack("<%df" % (V * d), raw)
        new = struct.unpack("<%df" % (n_new * d), graw[len(raw):])
        for j in range(d):
            mean = f32(math.fsum(old[v * d + j] for v in range(V)) / V)
            for r in range(n_new):
                got = new[r * d + j]
                # the engine sums in double: at most ~2 float32 ulps apart
                assert abs(got - mean) <= 2.4e-7 * abs(mean) + 1e-12, (name, r, j, got, mean)
        grew += 1
    assert grew == 2, "embedding or lm_head missing"
    print("ok: %d tensors, embedding and lm_head grown by %d mean rows" % (len(base), n_new))


main()
