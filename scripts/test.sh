#!/usr/bin/env bash
# The full check: formatting, lints, and every test (unit, golden, and the
# integration tests that bootstrap a real Debian rootfs with mmdebstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/deps.sh test
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The agent baked into images is the static build; tests bake and inspect it.
IMGBUILD_AGENT="$(bash firstboot-agent/build-static.sh)"
export IMGBUILD_AGENT
# The end-to-end tests install this stand-in as K3s inside containers.
K3S_STANDIN="$(bash tests/k3s-standin/build-static.sh)"
export K3S_STANDIN
cargo test --workspace 2>&1
