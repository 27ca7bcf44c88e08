#!/usr/bin/env bash
# Storage SCP benchmark (issue 3, point 8): dicomstore beside DCMTK storescp
# (default and --bit-preserving, --fork with four senders), pynetdicom's
# storescp and Orthanc, all fed by DCMTK storescu, using ../shared/bench; then
# the medians and the ratios of dicomstore to each peer (benchmarks/scp_ratios.py).
#
# usage: benchmarks/bench_scp.sh [A] [B] [D]      (default: A B D)
#   A  one association, sets ct and tiny       B  four senders, ct
#   D  big (8 x 100 MB), watch peak RSS
# Environment: REPS (3), BENCH_SCRATCH (~/.cache/dicombench), and everything
# ../shared/bench/run_peers.sh reads.  Needs root for the fresh ext4 per run.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
SHARED="${SHARED_BENCH:-$HERE/../../shared/bench}"
[ -d "$SHARED" ] || SHARED="$HERE/../shared/bench"
export BENCH_SCRATCH="${BENCH_SCRATCH:-$HOME/.cache/dicombench}"
# the harness's own venv, or this Python (which has pydicom and pynetdicom)
[ -x "$BENCH_SCRATCH/venv/bin/python" ] || export BENCH_PYTHON="${BENCH_PYTHON:-$(command -v python3)}"
# the console script beside this Python's interpreter, not a version manager's shim
# (pyenv's is a bash script that runs `pyenv exec`: ~0.15 s more to start; the harness
# counts the receiver's CPU from "port ready", so the shim's never was), as DCMTK and
# Orthanc run as installed binaries
DS="$(python3 -c 'import os, sys; print(os.path.join(os.path.dirname(sys.executable), "dicomstore"))')"
[ -x "$DS" ] || DS="$(command -v dicomstore)"
export EXTRA_RECEIVERS="dicomstore=$DS serve --port {port} --storage {out}/ds --log-level warning;;dicomstore-nofsync=$DS serve --port {port} --storage {out}/ds --fsync off --log-level warning"
export RECEIVERS_A="${RECEIVERS_A:-dcmtk dcmtk-bp pynetdicom orthanc-sync}"
export RECEIVERS_B="${RECEIVERS_B:-dcmtk-fork dcmtk-bp-fork pynetdicom orthanc-sync}"
export RECEIVERS_D="${RECEIVERS_D:-dcmtk dcmtk-bp pynetdicom orthanc-sync}"
[ $# -gt 0 ] || set -- A B D
# The harness's receivers listen on 11112 (DICOM) and 11113 (HTTP): something else
# there would take the senders' instances while every receiver "stores 0" unnoticed.
for port in 11112 11113; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "bench_scp: 127.0.0.1:$port is taken by another process; end it first" >&2
    exit 2
  fi
done
export RESULTS="${RESULTS:-$BENCH_SCRATCH/results/peers-$(date +%Y%m%d-%H%M%S).jsonl}"
mkdir -p "$(dirname "$RESULTS")"
bash "$SHARED/run_peers.sh" "$@"
echo
python3 "$HERE/scp_ratios.py" "$RESULTS"  # medians, and dicomstore / each peer
