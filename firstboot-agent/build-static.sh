#!/bin/sh
# Build firstboot-agent as a static-pie x86_64 glibc binary that runs on
# Ubuntu 22.04/24.04, Debian 12 and Rocky 9 alike. The explicit --target keeps
# +crt-static off build scripts and proc-macros. Prints the binary's path.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
target=x86_64-unknown-linux-gnu
cd "$here/.."
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked -p firstboot-agent --target "$target" >&2
target_dir=${CARGO_TARGET_DIR:-$(cd "$here/.." && pwd)/target}
echo "$target_dir/$target/release/firstboot-agent"
