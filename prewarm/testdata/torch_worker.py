# Warm worker for lazyfs-prewarm --worker-command (protocol in
# docs/prewarm.md): import torch, create the CUDA context on the GPU in
# CUDA_VISIBLE_DEVICES, listen on $LAZYFS_WORKER_SOCKET, print READY, and
# answer one line per request: "op" -> "ok <unix-ns when done>", "ping" ->
# "pong", "exit" -> "bye" and exit. SIGTERM exits.
import json
import os
import signal
import socket
import sys
import time

t0 = time.time_ns()
import torch  # noqa: E402

torch.zeros(1, device="cuda")
torch.cuda.synchronize()
t_ready = time.time_ns()

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
                             "init_ms": (t_ready - t0) / 1e6}), flush=True)

try:
    while True:
        conn, _ = srv.accept()
        with conn, conn.makefile("rwb") as f:
            for line in f:
                cmd = line.strip()
                if cmd == b"op":
                    y = torch.ones(1 << 18, device="cuda")
                    torch.cuda.synchronize()
                    f.write(b"ok %d\n" % time.time_ns())
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
