//! The `registry-dns` binary: parse the flags, set up logging, run the server until SIGTERM (or,
//! with `doctor`, diagnose the local resolver and exit).

use std::process::ExitCode;

use clap::Parser;
use registry_dns::config::cli::{Cli, Command};
use registry_dns::server::shutdown::signal_shutdown;
use registry_dns::{Server, doctor, logging};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            return fail(
                e.render().to_string().lines().next().unwrap_or("bad arguments").trim_start_matches("error: "),
            );
        }
    };
    if let Some(Command::Doctor(args)) = cli.command {
        return doctor::run(&args);
    }
    logging::init(cli.log_format);
    let config = cli.into_config();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(async {
        let server = Server::bind(config).await?;
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
