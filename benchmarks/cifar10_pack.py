"""Lossless CIFAR-10 packing for moving the data to a remote GPU machine whose transfers are capped (64 MiB a
call here): MED (LOCO-I) prediction residuals + xz bring the 60,000 images to 2 x 56 MB, and unpacking checks
the pixels against the SHA-256 published in ../shared/data/README.md.

pack:   python benchmarks/cifar10_pack.py pack PART OUT.bin   (PART 1 = train[:30000], 2 = train[30000:] + test)
unpack: python benchmarks/cifar10_pack.py unpack PART1.bin PART2.bin OUTDIR  -> OUTDIR/cifar10/{train,test}.npz (checks SHA-256)
"""
import hashlib, io, lzma, sys
import numpy as np

SHA = {"train": "47af8b02cfcfb6cdf3dbbd1969ad7f1b70f4413f6f80f437b020ee4e5bc8304a",
       "test": "f9b1e2130bab680db56eb06d886f7f1ad0f1183907ceff4659d1735c890f5b04"}

def _nb(p):
    a = np.zeros_like(p); a[:, :, 1:] = p[:, :, :-1]
    b = np.zeros_like(p); b[:, 1:, :] = p[:, :-1, :]
    c = np.zeros_like(p); c[:, 1:, 1:] = p[:, :-1, :-1]
    return a, b, c

def _pred(a, b, c):
    mx, mn = np.maximum(a, b), np.minimum(a, b)
    return np.where(c >= mx, mn, np.where(c <= mn, mx, a + b - c))

def pack(part, out):
    tr = np.load("../shared/data/cifar10/train.npz"); te = np.load("../shared/data/cifar10/test.npz")
    if part == 1:
        x, meta = tr["x"][:30000], {"y_train_a": tr["y"][:30000], "classes": tr["classes"]}
    else:
        x = np.concatenate([tr["x"][30000:], te["x"]])
        meta = {"y_train_b": tr["y"][30000:], "y_test": te["y"]}
    p = x.astype(np.int16)  # N,H,W,C
    r = ((p - _pred(*_nb(p))) % 256).astype(np.uint8)
    buf = io.BytesIO(); np.savez(buf, n=np.array(len(x)), **meta)
    body = lzma.compress(r.tobytes(), preset=9 | lzma.PRESET_EXTREME)
    with open(out, "wb") as f:
        m = buf.getvalue(); f.write(len(m).to_bytes(8, "little")); f.write(m); f.write(body)

def _read(path):
    raw = open(path, "rb").read(); k = int.from_bytes(raw[:8], "little")
    meta = dict(np.load(io.BytesIO(raw[8:8 + k])))
    r = np.frombuffer(lzma.decompress(raw[8 + k:]), np.uint8).reshape(int(meta["n"]), 32, 32, 3).astype(np.int16)
    p = np.zeros_like(r)
    for i in range(32):
        for j in range(32):
            a = p[:, i, j - 1] if j else 0 * r[:, 0, 0]
            b = p[:, i - 1, j] if i else 0 * r[:, 0, 0]
            c = p[:, i - 1, j - 1] if i and j else 0 * r[:, 0, 0]
            p[:, i, j] = (r[:, i, j] + _pred(a, b, c)) % 256
    return p.astype(np.uint8), meta

def unpack(f1, f2, dst):
    import os
    xa, ma = _read(f1); xb, mb = _read(f2)
    train_x = np.concatenate([xa, xb[:20000]]); test_x = xb[20000:]
    train_y = np.concatenate([ma["y_train_a"], mb["y_train_b"]])
    for name, x in (("train", train_x), ("test", test_x)):
        h = hashlib.sha256(x.tobytes()).hexdigest()
        assert h == SHA[name], f"{name} pixels do not match the source (sha {h})"
    os.makedirs(f"{dst}/cifar10", exist_ok=True)
    np.savez(f"{dst}/cifar10/train.npz", x=train_x, y=train_y, classes=ma["classes"])
    np.savez(f"{dst}/cifar10/test.npz", x=test_x, y=mb["y_test"], classes=ma["classes"])
    print("unpacked", train_x.shape, test_x.shape)

if __name__ == "__main__":
    if sys.argv[1] == "pack":
        pack(int(sys.argv[2]), sys.argv[3])
    else:
        unpack(sys.argv[2], sys.argv[3], sys.argv[4])
