"""deepfm: reproducible CTR / top-K recommendation models on MovieLens, driven by DVC."""

import os

__version__ = "0.1.0"

# Byte-identical reruns (docs/guarantees.md, "How" says why each): MKL's matrix kernels in
# strict mode on the AVX2 branch, torch's vectorised kernels on AVX2, and no dynamic thread
# counts. They are read when the first kernel runs, so importing deepfm anywhere before that
# pins them, also in DDP workers and queued runs. A value already set in the environment wins
# (and is recorded in metrics/eval.json).
REPRODUCIBLE_KERNELS = {
    "MKL_CBWR": "AVX2,STRICT",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
}
for _name, _value in REPRODUCIBLE_KERNELS.items():
    os.environ.setdefault(_name, _value)
