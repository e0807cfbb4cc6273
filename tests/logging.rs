//! The log on stderr carries no terminal escape codes where nobody reads it on a terminal: in a
//! pod, stderr is a pipe to the container runtime. On a terminal (a pty here) it is coloured,
//! unless `NO_COLOR` is set, so the pipe's plain output is the check and not an accident.

mod support;

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::RegistryDns;

const ESC: char = '\u{1b}';
const ARGS: [&str; 6] =
    ["--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--record", "knative-local-registry=10.0.0.10"];

#[test]
fn a_pipe_gets_no_escape_codes() {
    let mut command = Command::new(RegistryDns::BIN);
    command.env_remove("NO_COLOR");
    let s = RegistryDns::start_with(command, &ARGS);
    // Every line: on a terminal each timestamp alone would be dimmed with an escape code.
    let logs = s.logs();
    assert!(logs.iter().any(|l| l.contains("registry-dns serving")), "{logs:?}");
    for line in &logs {
        assert!(!line.contains(ESC), "escape code in a piped log line: {line:?}");
    }
}

#[test]
fn a_terminal_gets_colours_unless_no_color_is_set() {
    let coloured = log_on_a_pty(None);
    assert!(coloured.contains(ESC), "no colour on a terminal: {coloured:?}");
    for no_color in ["1", "true"] {
        let plain = log_on_a_pty(Some(no_color));
        assert!(plain.contains("registry-dns serving"), "{plain:?}");
        assert!(!plain.contains(ESC), "NO_COLOR={no_color} on a terminal: {plain:?}");
    }
}

/// Runs the binary with stderr on a fresh pty until its startup line, and returns what it wrote.
fn log_on_a_pty(no_color: Option<&str>) -> String {
    let (mut controller, terminal) = {
        let (mut controller, mut terminal) = (-1, -1);
        let rc = unsafe {
            libc::openpty(&mut controller, &mut terminal, std::ptr::null_mut(), std::ptr::null(), std::ptr::null())
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        unsafe { (File::from_raw_fd(controller), OwnedFd::from_raw_fd(terminal)) }
    };
    let mut command = Command::new(RegistryDns::BIN);
    command.args(ARGS).env_remove("RUST_LOG").env_remove("NO_COLOR").stdout(Stdio::null()).stderr(terminal);
    if let Some(value) = no_color {
        command.env("NO_COLOR", value);
    }
    let mut child = command.spawn().expect("starting registry-dns");
    drop(command); // closes our copy of the terminal side, so reads end when the child exits
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = controller.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&out).contains("registry-dns serving") && Instant::now() < deadline {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
            out.extend(chunk);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    String::from_utf8_lossy(&out).into_owned()
}
