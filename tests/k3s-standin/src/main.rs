//! `k3s-standin`: a stand-in for tests, not K3s. Installed by imgbuild's
//! tests as `/usr/local/bin/k3s`; see the library docs and README.md.

fn main() {
    std::process::exit(k3s_standin::cli::main(std::env::args().collect()));
}
