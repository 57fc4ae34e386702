//! SnapshotMetadata (alpha) is not offered: SNAPSHOT_METADATA_SERVICE is not advertised.
//! The service is registered only so that a caller gets UNIMPLEMENTED with a readable
//! message instead of tonic's empty one.

use csi_proto as pb;
use csi_proto::tonic::{self, Request, Response, Status};

use crate::error::Error;
use crate::service::{Service, status};

type Empty<T> = tokio_stream::Empty<Result<T, Status>>;

fn refused() -> Status {
    status(Error::Unimplemented(
        "the SnapshotMetadata service (SNAPSHOT_METADATA_SERVICE is not advertised)",
    ))
}

#[tonic::async_trait]
impl pb::snapshot_metadata_server::SnapshotMetadata for Service {
    type GetMetadataAllocatedStream = Empty<pb::GetMetadataAllocatedResponse>;
    type GetMetadataDeltaStream = Empty<pb::GetMetadataDeltaResponse>;

    #[tracing::instrument(skip_all)]
    async fn get_metadata_allocated(
        &self,
        _req: Request<pb::GetMetadataAllocatedRequest>,
    ) -> Result<Response<Self::GetMetadataAllocatedStream>, Status> {
        Err(refused())
    }

    #[tracing::instrument(skip_all)]
    async fn get_metadata_delta(
        &self,
        _req: Request<pb::GetMetadataDeltaRequest>,
    ) -> Result<Response<Self::GetMetadataDeltaStream>, Status> {
        Err(refused())
    }
}
