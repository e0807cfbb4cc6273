//! The `registry-dns` binary: parse the flags (and `--config`), set up logging, run the server
//! until SIGTERM, reloading on SIGHUP (or, with `doctor`, diagnose the local resolver and exit;
//! with `node-setup`, do one step of node setup and exit).

use std::process::ExitCode;

use registry_dns::config::cli::{CommandLine, Subcommand, one_line};
use registry_dns::server::shutdown::signal_shutdown;
use registry_dns::{Server, doctor, logging, net, node_setup};

fn main() -> ExitCode {
    let command_line = match CommandLine::parse() {
        Ok(command_line) => command_line,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(&one_line(&e)),
    };
    let cli = match command_line.load() {
        Ok(cli) => cli,
        Err(e) => return fail(&format!("{e:#}")),
    };
    match cli.command {
        Some(Subcommand::Doctor(args)) => return doctor::run(&args),
        Some(Subcommand::NodeSetup(args)) => return node_setup::run(&args),
        None => {}
    }
    logging::init(cli.settings.log_format);
    if let Err(e) = net::limits::raise_open_files() {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    let config = cli.settings.into_config();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(async {
        let server = Server::bind(config).await?;
        // SIGHUP re-reads --config (and the resolv.conf) under the same flags.
        let load = move || {
            let command_line = command_line.clone();
            async move { Ok(command_line.load()?.settings.into_config()) }
        };
        tokio::spawn(server.reloader().on_sighup(load));
        server.run(signal_shutdown()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("{e:#}")),
    }
}

/// Every startup failure is one line on stderr and a non-zero exit.
fn fail(reason: &str) -> ExitCode {
    eprintln!("registry-dns: {reason}");
    ExitCode::from(2)
}
