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

impl Service {
    /// Runs `f` on the request's own task instead of the blocking pool, for work the
    /// caller has checked is quick and bounded: path lookups on the local disk, one
    /// mount(2) or umount(2) of a bind mount, and in-memory state (a publication's record
    /// is a write into its slot, committed later by the syncer; nothing here waits for a
    /// flush, a fork or a device). For such work the hop to the blocking pool costs more
    /// than the work: two cross-thread wake-ups per request, a third of a
    /// publish+unpublish pair's CPU (docs/benchmarks.md). Everything else goes through
    /// [`Service::run`].
    pub(crate) fn run_quick<T>(
        &self,
        f: impl FnOnce(&Driver) -> error::Result<T>,
    ) -> Result<T, Status> {
        f(&self.d).map_err(status)
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
