"""deepfm: reproducible CTR / top-K recommendation models on MovieLens, driven by DVC."""

import os

__version__ = "0.1.0"

# Byte-identical reruns (docs/guarantees.md). Both are read when the first kernel runs, so
# importing deepfm anywhere before that pins them, also in DDP workers and queued runs:
# - MKL's matrix kernels: in its default mode MKL picks a code path per call, by CPU and by
#   the memory alignment of the arrays, which differs from run to run; a fixed AVX2 branch in
#   strict mode gives the same bits on every run and on every Intel CPU with AVX2;
# - torch's own vectorised kernels (sums, softmax): AVX-512 and AVX2 versions add in other
#   orders; AVX2 on every machine that has it.
# - the thread count: MKL and OpenMP may otherwise use fewer threads than asked for in a call
#   (MKL_DYNAMIC is on by default), which changes how sums are split (Intel's reproducibility
#   conditions ask for both off).
# A value already set in the environment wins (and is recorded in metrics/eval.json).
REPRODUCIBLE_KERNELS = {
    "MKL_CBWR": "AVX2,STRICT",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
}
for _name, _value in REPRODUCIBLE_KERNELS.items():
    os.environ.setdefault(_name, _value)
