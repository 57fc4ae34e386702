//! `strata-node`: parses flags and runs `strata_node::run` until SIGTERM or SIGINT.

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> std::process::ExitCode {
    // A pod's infra process is this binary too; it must start before any thread does
    // (unshare of the network namespace is per thread, of the IPC one per process).
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(strata_node::runner::infra::SUBCOMMAND) {
        return strata_node::runner::infra::main(&argv[2..]);
    }
    let args = strata_node::Args::parse();
    strata_report::init_daemon_logging("info");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strata-node: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                // Without handlers a SIGTERM would kill us mid-teardown: refuse to run.
                eprintln!("strata-node: installing signal handlers: {e}");
                return Err(strata_node::Error::Signals(e));
            }
        };
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
            }
        };
        strata_node::run(args, shutdown).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-node: {}", strata_report::Chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
