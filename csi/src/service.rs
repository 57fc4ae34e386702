//! The gRPC face of the driver: one `Service` that implements Identity, Controller, Node
//! and GroupController by translating requests and calling `Driver` on the blocking pool.

use std::sync::Arc;

use csi_proto::tonic::{Code, Status};

use crate::driver::Driver;
use crate::error::{self, Error};

#[derive(Clone)]
pub struct Service {
    pub(crate) d: Arc<Driver>,
}

impl Service {
    pub fn new(d: Arc<Driver>) -> Self {
        Service { d }
    }

    /// Runs `f` on the blocking pool (it makes syscalls, forks tools and waits for state
    /// commits) and turns its error into a Status, logging it once.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, Status>
    where
        F: FnOnce(&Driver) -> error::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let d = self.d.clone();
        error::blocking(move || f(&d)).await.map_err(status)
    }
}

/// Error → Status, logged at a level that matches who has to act.
pub(crate) fn status(e: Error) -> Status {
    let s = Status::from(e);
    match s.code() {
        Code::Internal | Code::Unknown | Code::DataLoss => {
            tracing::error!(code = ?s.code(), message = %s.message(), "request failed")
        }
        _ => tracing::debug!(code = ?s.code(), message = %s.message(), "request refused"),
    }
    s
}

/// A request converted into its domain value (`request.rs`), or the status refusing it.
pub(crate) fn domain<T, R>(r: R) -> Result<T, Status>
where
    T: TryFrom<R, Error = Error>,
{
    T::try_from(r).map_err(status)
}
