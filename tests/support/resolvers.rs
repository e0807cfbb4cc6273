//! The real stub resolvers as test programs: `tests/resolvers/lookup.c` built against glibc and
//! musl, and `lookup.go` with Go's own resolver. Each run is one lookup from a new process.

use std::path::PathBuf;
use std::process::Command;

/// `lookup.c` against glibc, the stub of Debian, Ubuntu and Fedora nodes.
pub fn glibc() -> PathBuf {
    c("lookup-glibc", "gcc", &[])
}

/// (glibc, musl, Go) lookup programs, built into the test's scratch directory.
pub fn build() -> [PathBuf; 3] {
    let go = out().join("lookup-go");
    let status =
        Command::new("go").args(["build", "-o"]).arg(&go).arg(src().join("lookup.go")).env("CGO_ENABLED", "0").status();
    assert!(status.is_ok_and(|s| s.success()), "go build failed (Go is on every machine of this kind)");
    [glibc(), musl(), go]
}

/// `lookup.c` linked static against musl, the stub of Alpine-based images.
pub fn musl() -> PathBuf {
    c("lookup-musl", "musl-gcc", &["-static"])
}

fn c(name: &str, cc: &str, flags: &[&str]) -> PathBuf {
    let binary = out().join(name);
    let status = Command::new(cc).args(flags).args(["-O2", "-o"]).arg(&binary).arg(src().join("lookup.c")).status();
    assert!(status.is_ok_and(|s| s.success()), "{cc} failed (tests/run.sh installs gcc and musl-tools)");
    binary
}

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/resolvers")
}

fn out() -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("resolvers");
    std::fs::create_dir_all(&out).unwrap();
    out
}
