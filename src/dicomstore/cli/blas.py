"""One BLAS thread for the command line (imported first by ``dicomstore.cli``).

pydicom imports numpy, whose OpenBLAS starts a thread per core at import; those
threads spin while they wait for work, about 0.1 s of CPU per process start, and
hold memory. No ``dicomstore`` command does linear algebra, so the command line
asks for one thread, unless the environment already says how many. (The library,
``import dicomstore``, leaves its host's environment alone.)
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
