//! How Strata's programs report: an error with its causes as one line, and the daemons'
//! log set-up.
//!
//! One formatter, because a gRPC status, an event message and a daemon's last words all
//! hold a single string, and they should read the same way everywhere.

#![forbid(unsafe_code)]

use std::fmt;
use std::io::IsTerminal;

/// Displays an error and its `source()` chain as "error: cause: root cause".
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(cause) = cur {
            write!(f, ": {cause}")?;
            cur = cause.source();
        }
        Ok(())
    }
}

/// "error: cause: root cause" as a `String`.
pub fn chain(err: &dyn std::error::Error) -> String {
    Chain(err).to_string()
}

/// Sets up `tracing` for a daemon: filter from `RUST_LOG` (else `default_filter`),
/// written to stderr, with colour only when stderr is a terminal, so a log redirected
/// to a file carries no escape codes.
pub fn init_daemon_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl fmt::Display for E {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn chain_joins_every_cause_in_order() {
        let e = E(
            "mount",
            Some(Box::new(E("attach loop", Some(Box::new(E("EBUSY", None)))))),
        );
        assert_eq!(chain(&e), "mount: attach loop: EBUSY");
        assert_eq!(chain(&E("alone", None)), "alone");
    }
}
