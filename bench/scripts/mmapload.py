# loader-like read: mmap the file, copy tensors of 2-16 MiB out in a random order
import mmap, os, random, sys, time, hashlib
path = sys.argv[1]
size = os.path.getsize(path)
r = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
ts, off = [], 0
while off < size:
    n = min(2 * 2**20 + r.randrange(14 * 2**20), size - off)
    ts.append((off, n)); off += n
r.shuffle(ts)
t0 = time.time()
with open(path, "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    for o, n in ts:
        b = m[o:o + n]
    m.close()
print(f"{time.time() - t0:.3f}")
