#!/usr/bin/env bash
# Build the images a profile describes (default: profiles/worker.yaml) into out/.
# Installs missing host tools, builds the static firstboot-agent and imgbuild,
# then runs `imgbuild build`. Extra arguments go to `imgbuild build`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/deps.sh build
bash firstboot-agent/build-static.sh >/dev/null
cargo build --release --quiet -p imgbuild
if (($# == 0)); then set -- profiles/worker.yaml; fi
exec target/release/imgbuild build "$@"
