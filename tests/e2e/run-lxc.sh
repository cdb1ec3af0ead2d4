#!/bin/sh
# Run the real end-to-end LXC test (builder/tests/e2e_lxc.rs): builds the
# static firstboot-agent and the static k3s-standin, then runs the test.
# Needs root, lxc, mmdebstrap, iproute2 and zstd (scripts/deps.sh test
# installs them). Extra arguments go to the test harness.
set -eu
cd "$(dirname "$0")/../.."
IMGBUILD_AGENT=$(bash firstboot-agent/build-static.sh)
K3S_STANDIN=$(bash tests/k3s-standin/build-static.sh)
export IMGBUILD_AGENT K3S_STANDIN
exec cargo test -p imgbuild --test e2e_lxc -- --nocapture "$@"
