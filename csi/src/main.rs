//! `strata-csi`: parses flags and runs `strata_csi::serve` until SIGTERM or SIGINT.

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> std::process::ExitCode {
    let config = strata_csi::config::Config::parse();
    strata_report::init_daemon_logging("info");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strata-csi: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            }
        };
        strata_csi::serve(config, shutdown).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-csi: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
