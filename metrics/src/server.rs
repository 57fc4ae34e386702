//! The HTTP endpoint: `/metrics` and `/healthz` over HTTP/1.1, nothing else.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// What `/healthz` answers: 200 with `detail` when `ok`, else 503 with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub ok: bool,
    /// One `key: value` per line, e.g. `driver: waiting`; shown to whoever probes.
    pub detail: String,
}

impl Health {
    pub fn ok(detail: impl Into<String>) -> Health {
        Health {
            ok: true,
            detail: detail.into(),
        }
    }

    pub fn failing(detail: impl Into<String>) -> Health {
        Health {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// The daemon's health check; called on every `/healthz`, so it must be cheap and must
/// not block (read atomics or a lock held briefly).
pub type HealthCheck = Arc<dyn Fn() -> Health + Send + Sync>;

/// Connections served at once; more wait in the listen backlog. A scraper and a
/// liveness probe need two.
const MAX_CONNECTIONS: usize = 16;
/// A client that has not sent its request headers by then is dropped, so a slow or
/// idle connection cannot hold a slot forever.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A listening endpoint; dropping it stops accepting and closes its connections.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// Binds `addr` (port 0 picks a free port) and serves until dropped. Logs
    /// [`crate::LISTENING`] with the bound address.
    pub async fn bind(
        addr: SocketAddr,
        registry: Registry,
        health: HealthCheck,
    ) -> std::io::Result<Endpoint> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        info!(address = %addr, "{}", crate::LISTENING);
        let state = Arc::new(State { registry, health });
        let task = tokio::spawn(accept_loop(listener, state));
        Ok(Endpoint { addr, task })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    registry: Registry,
    health: HealthCheck,
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: wait a little instead of spinning on the error.
                warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Reap finished connections so the set does not grow with every scrape.
        while connections.try_join_next().is_some() {}
        let state = Arc::clone(&state);
        // Tasks in the JoinSet are aborted when the accept loop is (Endpoint dropped).
        connections.spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(respond(&state, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "metrics connection ended with an error");
            }
        });
    }
}

async fn respond<B>(state: &Arc<State>, req: Request<B>) -> Response<Full<Bytes>> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut response = match req.uri().path() {
        "/metrics" => {
            let state = Arc::clone(state);
            // Collectors may stat pools or read a database: not on an async worker.
            let encoded = tokio::task::spawn_blocking(move || {
                let mut out = String::new();
                prometheus_client::encoding::text::encode(&mut out, &state.registry).map(|()| out)
            })
            .await;
            match encoded {
                Ok(Ok(body)) => {
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(OPENMETRICS),
                    );
                    r
                }
                Ok(Err(std::fmt::Error)) => {
                    warn!("encoding metrics failed");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding metrics failed\n",
                    )
                }
                Err(e) => {
                    warn!(error = %e, "the metrics encoder panicked");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding metrics failed\n",
                    )
                }
            }
        }
        "/healthz" => {
            let h = (state.health)();
            let status = if h.ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let first = if h.ok { "ok" } else { "unhealthy" };
            let detail = h.detail.trim_end();
            let body = if detail.is_empty() {
                format!("{first}\n")
            } else {
                format!("{first}\n{detail}\n")
            };
            text(status, body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics or /healthz\n",
        ),
    };
    if head {
        // Same headers (Content-Length included), no body.
        let len = http_body::Body::size_hint(response.body()).exact();
        *response.body_mut() = Full::new(Bytes::new());
        if let Some(len) = len {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
        }
    }
    response
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape;
    use prometheus_client::metrics::counter::Counter;
    use std::sync::atomic::{AtomicBool, Ordering};

    async fn endpoint(healthy: Arc<AtomicBool>) -> (Endpoint, Counter) {
        let mut registry = Registry::with_prefix("test");
        let hits = Counter::default();
        registry.register("hits", "Hits", hits.clone());
        let health: HealthCheck = Arc::new(move || {
            if healthy.load(Ordering::SeqCst) {
                Health::ok("loops: running")
            } else {
                Health::failing("loops: stopped")
            }
        });
        let ep = Endpoint::bind("127.0.0.1:0".parse().unwrap(), registry, health)
            .await
            .unwrap();
        (ep, hits)
    }

    async fn get(addr: SocketAddr, method: &str, path: &str) -> scrape::Reply {
        let (method, path) = (method.to_string(), path.to_string());
        tokio::task::spawn_blocking(move || scrape::request(addr, &method, &path))
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_and_health_and_nothing_else() {
        let healthy = Arc::new(AtomicBool::new(true));
        let (ep, hits) = endpoint(healthy.clone()).await;
        assert_ne!(ep.local_addr().port(), 0);
        hits.inc_by(3);

        let r = get(ep.local_addr(), "GET", "/metrics").await;
        assert_eq!(r.status, 200);
        assert!(r.content_type.starts_with("application/openmetrics-text"));
        let samples = scrape::parse(&r.body).unwrap();
        assert_eq!(samples.value("test_hits_total", &[]), Some(3.0));

        let r = get(ep.local_addr(), "GET", "/healthz").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok\nloops: running\n"));
        healthy.store(false, Ordering::SeqCst);
        let r = get(ep.local_addr(), "GET", "/healthz").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (503, "unhealthy\nloops: stopped\n")
        );

        let r = get(ep.local_addr(), "HEAD", "/metrics").await;
        assert_eq!((r.status, r.body.as_str()), (200, ""));
        assert_eq!(get(ep.local_addr(), "GET", "/").await.status, 404);
        assert_eq!(get(ep.local_addr(), "POST", "/metrics").await.status, 405);
    }

    #[tokio::test]
    async fn dropping_the_endpoint_closes_the_port() {
        let (ep, _) = endpoint(Arc::new(AtomicBool::new(true))).await;
        let addr = ep.local_addr();
        drop(ep);
        // The abort takes effect at the loop's next await.
        testkit::eventually("the port closed", Duration::from_secs(10), || async {
            std::net::TcpStream::connect(addr).is_err().then_some(())
        })
        .await;
    }

    #[tokio::test]
    async fn binding_a_busy_address_fails_clearly() {
        let (ep, _) = endpoint(Arc::new(AtomicBool::new(true))).await;
        let e = Endpoint::bind(
            ep.local_addr(),
            Registry::default(),
            Arc::new(|| Health::ok("")),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    }
}
