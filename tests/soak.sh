#!/usr/bin/env bash
# The long soak (not part of CI, which runs the same test for 60 s): 10 minutes by default of local
# and forwarded load while the upstream and the API server flap, in release mode. It prints one
# summary line (queries, wrong answers, forwarding failures, VmRSS early/late/peak).
# Usage: tests/soak.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_SECONDS=${1:-600} cargo test --release --locked --test soak -- --nocapture 2>&1 | grep -E '^soak:|^test |panicked|assert' 
