//! `registry-dns node-setup`: the steps of node setup (deploy/node) that a shell script should
//! not do itself. The setup pod's image (debian:bookworm-slim) has no JSON tool, and the node may
//! have none either, so the binary the project ships does them:
//!
//! - `copy-binary DEST`: the setup pod's init container copies this static binary out of the
//!   registry-dns image (distroless: no shell, no cp) into a volume the setup container shares.
//! - `docker-daemon-json install|remove --file PATH [REGISTRY...]`: merges the plain-HTTP
//!   registries into Docker's daemon.json, and gives the file back byte for byte
//!   ([`daemon_json`]). The setup script runs it on the node (through nsenter), so that paths are
//!   the node's own.
//!
//! Each prints one line saying what it did. Exit status: 0, also when a file is left alone
//! because it is someone else's (the line says so); 1 when a file cannot be read or written.

pub mod daemon_json;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The subcommands of `registry-dns node-setup`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum NodeSetupCommand {
    /// Copy this binary to DEST (the setup pod's init container).
    CopyBinary {
        #[arg(value_name = "DEST")]
        dest: PathBuf,
    },
    /// Merge the plain-HTTP registries into Docker's daemon.json, or undo that.
    DockerDaemonJson {
        #[arg(value_enum)]
        action: Action,
        /// Docker's daemon.json; the state file beside it is named after it.
        #[arg(long, value_name = "PATH", default_value = "/etc/docker/daemon.json")]
        file: PathBuf,
        /// host:port of each registry that speaks plain HTTP.
        #[arg(value_name = "REGISTRY")]
        registries: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    Install,
    Remove,
}

/// `registry-dns node-setup ...`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeSetupArgs {
    #[command(subcommand)]
    pub command: NodeSetupCommand,
}

pub fn run(args: &NodeSetupArgs) -> ExitCode {
    let result = match &args.command {
        NodeSetupCommand::CopyBinary { dest } => copy_binary(dest),
        NodeSetupCommand::DockerDaemonJson { action, file, registries } => {
            daemon_json::apply(file, |current, state| match action {
                Action::Install => daemon_json::plan_install(file, current, state, registries),
                Action::Remove => daemon_json::plan_remove(file, current, state, registries),
            })
            .map(|(message, _)| message)
        }
    };
    match result {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("registry-dns node-setup: {e}");
            ExitCode::FAILURE
        }
    }
}

fn copy_binary(dest: &Path) -> Result<String, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut tmp = dest.as_os_str().to_os_string();
    tmp.push(".tmp");
    std::fs::copy(&me, &tmp)
        .and_then(|_| std::fs::rename(&tmp, dest))
        .map_err(|e| format!("cannot copy {} to {}: {e}", me.display(), dest.display()))?;
    Ok(format!("copied {} to {}", me.display(), dest.display()))
}
