# Warm worker for lazyfs-prewarm (protocol in docs/prewarm.md): import
# torch, create the CUDA context on the GPU in CUDA_VISIBLE_DEVICES, load
# --gib GiB of tensors (a stand-in for model weights) filled from host data,
# serve on the socket the daemon passed (LAZYFS_WORKER_FD) or on
# $LAZYFS_WORKER_SOCKET, print READY, and answer one line per request:
#   "op"    -> "ok <unix-ns when done>"
#   "check" -> "ok <unix-ns when done> <checksum>" after recomputing the
#              tensors' checksum on the GPU and comparing it with the one
#              taken at load ("error checksum ..." on a mismatch)
#   "ping"  -> "pong";  "exit" -> "bye" and exit.  SIGTERM exits.
# With --probe it is the cold-start probe instead: load, check, one op,
# print one JSON line (done_unix_nano) and exit.
import argparse
import json
import os
import signal
import socket
import sys
import time

t0 = time.time_ns()
import torch  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--gib", type=float, default=0, help="GiB of tensors to hold on the GPU")
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--probe", action="store_true")
args = ap.parse_args()
t_import = time.time_ns()

CHUNK = 256 << 20  # bytes per tensor
chunks = []
expected = []


def load():
    n = int(args.gib * (1 << 30)) // CHUNK
    if n == 0:
        torch.zeros(1, device="cuda")
        return
    g = torch.Generator().manual_seed(args.seed)
    host = torch.randint(-(1 << 31), (1 << 31) - 1, (CHUNK // 4,), dtype=torch.int32, generator=g)
    host = host.pin_memory()
    for k in range(n):
        t = host.to("cuda", non_blocking=True)
        t += k  # every tensor differs, so a swapped or stale one shows
        chunks.append(t)
    torch.cuda.synchronize()
    # The reference sums, taken on the GPU right after the load.
    expected[:] = [int(torch.sum(t, dtype=torch.int64)) for t in chunks]


def checksum():
    got = [int(torch.sum(t, dtype=torch.int64)) for t in chunks]
    torch.cuda.synchronize()
    for k, (a, b) in enumerate(zip(got, expected)):
        if a != b:
            return None, "checksum mismatch in tensor %d: %d != %d" % (k, a, b)
    return sum(got) & ((1 << 64) - 1), None


def op():
    y = torch.ones(1 << 18, device="cuda")
    torch.cuda.synchronize()
    return y


load()
t_ready = time.time_ns()

if args.probe:
    s, err = checksum()
    if err:
        print(err, file=sys.stderr)
        sys.exit(1)
    op()
    t_done = time.time_ns()
    print(json.dumps({"mode": "torch-cold-worker", "gib": args.gib, "checksum": str(s),
                      "import_done_unix_nano": t_import, "done_unix_nano": t_done,
                      "op_ms": (t_done - t_ready) / 1e6}), flush=True)
    sys.exit(0)

path = os.environ["LAZYFS_WORKER_SOCKET"]
if os.environ.get("LAZYFS_WORKER_FD"):
    # The daemon bound the socket in its root-only directory and passed it.
    srv = socket.socket(fileno=int(os.environ["LAZYFS_WORKER_FD"]))
    path = None
else:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o600)
    srv.listen(16)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("READY " + json.dumps({"pid": os.getpid(), "uuid": os.environ.get("LAZYFS_GPU_UUID", ""),
                             "alloc_bytes": len(chunks) * CHUNK,
                             "init_ms": (t_ready - t0) / 1e6}), flush=True)

try:
    while True:
        conn, _ = srv.accept()
        with conn, conn.makefile("rwb") as f:
            for line in f:
                cmd = line.strip()
                if cmd == b"op":
                    op()
                    f.write(b"ok %d\n" % time.time_ns())
                elif cmd == b"check":
                    s, err = checksum()
                    if err:
                        f.write(("error " + err + "\n").encode())
                    else:
                        op()
                        f.write(b"ok %d %d\n" % (time.time_ns(), s))
                elif cmd == b"ping":
                    f.write(b"pong\n")
                elif cmd == b"exit":
                    f.write(b"bye\n")
                    f.flush()
                    sys.exit(0)
                else:
                    f.write(b"error unknown command\n")
                f.flush()
finally:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass
