"""A diagnostic for the resume test (tests/test_pipeline.py), loaded by Python at start-up when
this folder is on PYTHONPATH: with DEEPFM_STEP_HASHES set to a folder, a train stage process
hashes every parameter after every optimizer step and writes the list there when it exits, so
a failed comparison can say at which step two runs parted instead of only that they did."""

import os
import sys

if os.environ.get("DEEPFM_STEP_HASHES") and any(a.endswith("train.py") for a in sys.argv):
    import atexit
    import hashlib
    import importlib
    import json
    import time

    importlib.import_module("deepfm")  # before torch, as in every stage: it pins the kernels
    from torch.optim.optimizer import register_optimizer_step_post_hook

    _hashes: list[str] = []
    _started = time.time()

    def _hash_parameters(optimizer, args, kwargs) -> None:
        digest = hashlib.blake2b(digest_size=8)
        for group in optimizer.param_groups:
            for p in group["params"]:
                digest.update(p.detach().cpu().numpy().tobytes())
        _hashes.append(digest.hexdigest())

    def _write() -> None:
        name = f"{_started:.6f}-{os.getpid()}.json"  # sorts in start order
        path = os.path.join(os.environ["DEEPFM_STEP_HASHES"], name)
        with open(path, "w") as f:
            json.dump({"argv": sys.argv, "hashes": _hashes}, f)

    register_optimizer_step_post_hook(_hash_parameters)
    atexit.register(_write)
