"""transferlab: transfer learning for image classification on an ordinary CPU."""

# torch's OpenMP runtime (libgomp) reads its settings once, when torch is first imported,
# and every module that imports torch imports this package first: the only early enough
# place. On a busy machine idle OpenMP threads then sleep instead of spinning, which there
# cost several times the CPU and wall time per step (threads.py; BENCHMARKS.md, threads_load).
from transferlab.threads import default_wait_policy as _default_wait_policy

_default_wait_policy()

__version__ = "0.1.0"
