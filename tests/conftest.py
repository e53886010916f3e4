import os

# Keep torch to the machine's two cores and deterministic across tests.
os.environ.setdefault("OMP_NUM_THREADS", "2")
