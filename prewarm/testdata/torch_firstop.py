# Probe for the device check: a fresh python process's time to its first
# completed CUDA op through PyTorch. Prints one JSON line; the parent notes
# the time before exec and reads done_unix_nano.
import json
import time

import torch

t_import = time.time_ns()
x = torch.ones(1 << 18, device="cuda")  # 1 MiB
torch.cuda.synchronize()
t_done = time.time_ns()
print(json.dumps({
    "mode": "torch-fresh",
    "uuid": str(getattr(torch.cuda.get_device_properties(0), "uuid", "")),
    "import_done_unix_nano": t_import,
    "done_unix_nano": t_done,
    "op_ms": (t_done - t_import) / 1e6,
}), flush=True)
