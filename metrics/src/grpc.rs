//! Counting and timing the calls a tonic server handles, as a tower layer around it.
//!
//! The names follow go-grpc-prometheus, which Kubernetes dashboards already know:
//! `<prefix>_grpc_server_handled_total` and `<prefix>_grpc_server_handling_seconds`, both
//! labelled `grpc_service`, `grpc_method` and `grpc_code` (the code's Go name, e.g. `OK`,
//! `NotFound`). A call is recorded once, when its status is known: from the response
//! headers for a trailers-only answer (how tonic sends an error), else from the trailers
//! at the end of the body; a call whose client went away first counts as `Canceled`.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Distinct (service, method) pairs recorded under their own names; beyond this every new
/// pair is recorded as method `other`, so a client sending made-up paths cannot grow the
/// registry without bound.
const MAX_METHODS: usize = 256;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

/// The metrics of one gRPC server.
#[derive(Debug)]
pub struct GrpcMetrics {
    handled: Family<CallLabels, Counter>,
    seconds: Family<CallLabels, Histogram, fn() -> Histogram>,
    services: Vec<String>,
    methods: Mutex<HashSet<(String, String)>>,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 33 s: a CreateVolume that formats a large image takes seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl GrpcMetrics {
    /// Registers the server's metrics in `registry`. `services` are the full names the
    /// server serves (`csi.v1.Controller`); calls to any other service are labelled
    /// `unknown`.
    pub fn register(registry: &mut Registry, services: &[&str]) -> Arc<GrpcMetrics> {
        let m = GrpcMetrics {
            handled: Family::default(),
            seconds: Family::new_with_constructor(latency_histogram),
            services: services.iter().map(|s| s.to_string()).collect(),
            methods: Mutex::default(),
        };
        registry.register(
            "grpc_server_handled",
            "gRPC calls completed, by service, method and status code",
            m.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from a gRPC call's arrival to its status, by service, method and status code",
            m.seconds.clone(),
        );
        Arc::new(m)
    }

    /// The labels of `path` (`/package.Service/Method`), bounded as described above.
    fn call_of(&self, path: &str) -> (String, String) {
        let unknown = || ("unknown".to_string(), "unknown".to_string());
        let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return unknown();
        };
        if !self.services.iter().any(|s| s == service) {
            return unknown();
        }
        let plausible = !method.is_empty()
            && method.len() <= 64
            && method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !plausible {
            return (service.to_string(), "other".to_string());
        }
        let mut seen = self.methods.lock().unwrap_or_else(|p| p.into_inner());
        let key = (service.to_string(), method.to_string());
        if seen.contains(&key) || seen.len() < MAX_METHODS {
            seen.insert(key.clone());
            key
        } else {
            (service.to_string(), "other".to_string())
        }
    }

    fn observe(&self, service: String, method: String, code: &'static str, start: Instant) {
        let labels = CallLabels {
            grpc_service: service,
            grpc_method: method,
            grpc_code: code,
        };
        self.handled.get_or_create(&labels).inc();
        self.seconds
            .get_or_create(&labels)
            .observe(start.elapsed().as_secs_f64());
    }
}

/// The Go name of a gRPC status code (`codes.Code.String()`), as dashboards expect.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        // The spec allows no other code; a peer that sends one gets it reported as Unknown,
        // as grpc-go does.
        _ => "Unknown",
    }
}

fn status_in(headers: &HeaderMap) -> Option<&'static str> {
    let v = headers.get("grpc-status")?;
    Some(code_name(v.to_str().ok()?.trim().parse().unwrap_or(2)))
}

/// Records one call exactly once: by [`Recorder::finish`], or as `Canceled` when dropped
/// first (the client reset the stream, or the connection closed).
#[derive(Debug)]
struct Recorder {
    metrics: Arc<GrpcMetrics>,
    call: Option<(String, String)>,
    start: Instant,
}

impl Recorder {
    fn finish(&mut self, code: &'static str) {
        if let Some((service, method)) = self.call.take() {
            self.metrics.observe(service, method, code, self.start);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish("Canceled");
    }
}

/// The layer to give `tonic::transport::Server::builder().layer(...)`. With `None` it
/// passes calls through untouched, so a server is built the same way with metrics off.
#[derive(Debug, Clone, Default)]
pub struct GrpcMetricsLayer(Option<Arc<GrpcMetrics>>);

impl GrpcMetricsLayer {
    pub fn new(metrics: Option<Arc<GrpcMetrics>>) -> Self {
        GrpcMetricsLayer(metrics)
    }
}

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Option<Arc<GrpcMetrics>>,
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for GrpcMetricsService<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let recorder = self.metrics.as_ref().map(|m| Recorder {
            call: Some(m.call_of(req.uri().path())),
            metrics: Arc::clone(m),
            start: Instant::now(),
        });
        MeteredFuture {
            inner: self.inner.call(req),
            recorder,
        }
    }
}

pin_project_lite::pin_project! {
    /// The handler's response future; hands the recorder on to the body.
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        recorder: Option<Recorder>,
    }
}

impl<F, B, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<MeteredBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut recorder = this.recorder.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let Some(code) = status_in(response.headers())
                    && let Some(r) = recorder.as_mut()
                {
                    // Trailers-only: the status is already here and the body is empty.
                    r.finish(code);
                }
                Ok(response.map(|inner| MeteredBody { inner, recorder }))
            }
            Err(e) => {
                // The service failed to produce any response: the client sees a reset.
                if let Some(r) = recorder.as_mut() {
                    r.finish("Unknown");
                }
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// The response body; records the status found in its trailers.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        recorder: Option<Recorder>,
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(r) = this.recorder.as_mut() {
            match &frame {
                Some(Ok(f)) => {
                    if let Some(code) = f.trailers_ref().and_then(status_in) {
                        r.finish(code);
                    }
                }
                // A body that fails or ends without trailers never told the client a status.
                Some(Err(_)) | None => r.finish("Unknown"),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape;
    use csi_proto as pb;
    use csi_proto::tonic::{self, Request as GrpcRequest, Response as GrpcResponse, Status};

    /// An Identity service whose Probe fails with NOT_FOUND when asked by a test, to see
    /// both the trailers (OK) and the trailers-only (error) path.
    #[derive(Clone, Default)]
    struct Identity {
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    #[tonic::async_trait]
    impl pb::identity_server::Identity for Identity {
        async fn get_plugin_info(
            &self,
            _: GrpcRequest<pb::GetPluginInfoRequest>,
        ) -> Result<GrpcResponse<pb::GetPluginInfoResponse>, Status> {
            Ok(GrpcResponse::new(pb::GetPluginInfoResponse {
                name: "test.example.com".into(),
                vendor_version: "1".into(),
                manifest: Default::default(),
            }))
        }
        async fn get_plugin_capabilities(
            &self,
            _: GrpcRequest<pb::GetPluginCapabilitiesRequest>,
        ) -> Result<GrpcResponse<pb::GetPluginCapabilitiesResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn probe(
            &self,
            _: GrpcRequest<pb::ProbeRequest>,
        ) -> Result<GrpcResponse<pb::ProbeResponse>, Status> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Status::not_found("asked to fail"));
            }
            Ok(GrpcResponse::new(pb::ProbeResponse { ready: Some(true) }))
        }
    }

    fn encode(registry: &Registry) -> scrape::Samples {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        scrape::parse(&text).unwrap()
    }

    #[tokio::test]
    async fn counts_calls_by_method_and_code_on_a_real_server() {
        let mut registry = Registry::with_prefix("t");
        let metrics = GrpcMetrics::register(&mut registry, &["csi.v1.Identity"]);
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let svc = Identity::default();
        let fail = svc.fail.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(GrpcMetricsLayer::new(Some(metrics)))
                .add_service(pb::identity_server::IdentityServer::new(svc))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async move {
                        let _ = stop_rx.await;
                    },
                ),
        );
        let channel = testkit::connect(&socket).await.unwrap();
        let mut client = pb::identity_client::IdentityClient::new(channel);
        client.probe(pb::ProbeRequest {}).await.unwrap();
        client.probe(pb::ProbeRequest {}).await.unwrap();
        fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let e = client.probe(pb::ProbeRequest {}).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        client
            .get_plugin_info(pb::GetPluginInfoRequest {})
            .await
            .unwrap();
        let _ = client
            .get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {})
            .await
            .unwrap_err();

        let s = encode(&registry);
        let probe = |code| {
            s.value(
                "t_grpc_server_handled_total",
                &[("grpc_method", "Probe"), ("grpc_code", code)],
            )
        };
        assert_eq!(probe("OK"), Some(2.0));
        assert_eq!(probe("NotFound"), Some(1.0));
        assert_eq!(
            s.value(
                "t_grpc_server_handled_total",
                &[
                    ("grpc_service", "csi.v1.Identity"),
                    ("grpc_method", "GetPluginInfo")
                ]
            ),
            Some(1.0)
        );
        assert_eq!(
            s.value(
                "t_grpc_server_handled_total",
                &[
                    ("grpc_method", "GetPluginCapabilities"),
                    ("grpc_code", "Unimplemented")
                ]
            ),
            Some(1.0)
        );
        assert_eq!(
            s.value(
                "t_grpc_server_handling_seconds_count",
                &[("grpc_method", "Probe"), ("grpc_code", "OK")]
            ),
            Some(2.0)
        );
        let _ = stop_tx.send(());
        server.await.unwrap().unwrap();
    }

    #[test]
    fn unknown_services_and_made_up_methods_stay_bounded() {
        let mut registry = Registry::default();
        let m = GrpcMetrics::register(&mut registry, &["csi.v1.Node"]);
        assert_eq!(
            m.call_of("/csi.v1.Node/NodeStageVolume"),
            ("csi.v1.Node".into(), "NodeStageVolume".into())
        );
        assert_eq!(
            m.call_of("/evil.Service/X"),
            ("unknown".into(), "unknown".into())
        );
        assert_eq!(m.call_of("no-slash"), ("unknown".into(), "unknown".into()));
        assert_eq!(
            m.call_of("/csi.v1.Node/a%20b"),
            ("csi.v1.Node".into(), "other".into())
        );
        for i in 0..MAX_METHODS + 10 {
            m.call_of(&format!("/csi.v1.Node/M{i}"));
        }
        assert_eq!(
            m.call_of("/csi.v1.Node/Fresh"),
            ("csi.v1.Node".into(), "other".into())
        );
        assert_eq!(
            m.call_of("/csi.v1.Node/NodeStageVolume"),
            ("csi.v1.Node".into(), "NodeStageVolume".into()),
            "a pair seen before the cap keeps its name"
        );
        assert_eq!(code_name(5), "NotFound");
        assert_eq!(code_name(99), "Unknown");
    }
}
