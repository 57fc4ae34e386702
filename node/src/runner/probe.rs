//! Startup, liveness and readiness probes of one container run, as the kubelet's prober
//! worker runs them: after `initialDelaySeconds`, one attempt every `periodSeconds`, each
//! bounded by `timeoutSeconds`; a result changes what is reported only after
//! `successThreshold` successes or `failureThreshold` failures in a row
//! (k8s-semantics: probes). Readiness starts as not ready, liveness as alive. A startup
//! probe reports once: its first success (the others then start), or `failureThreshold`
//! failures in a row (the run is killed, as for liveness).
//!
//! Handlers: `exec` runs through the runtime's exec (`Helper::exec`, with the timeout);
//! `httpGet` (HTTP on a loopback address) and `tcpSocket` connect from a short-lived
//! thread that has joined the pod's network namespace, so they reach the pod's own
//! 127.0.0.1 without any address on the host; so does `grpc`, the standard health
//! service over h2c. HTTPS probes use TLS without verifying the certificate, as the
//! kubelet's do.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use strata_runtime::{ExecOptions, ExecOutcome};
use strata_store::k8s_openapi::api::core::v1::{Container, Probe};
use strata_store::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::mpsc::UnboundedSender;

use super::container::Engine;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn word(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// What a probe task tells its pod worker.
#[derive(Debug)]
pub enum Msg {
    /// One attempt failed (for the `Unhealthy` event).
    Failed {
        container: String,
        id: String,
        kind: Kind,
        output: String,
    },
    /// The reported result changed (a liveness task ends after reporting a failure).
    Changed {
        container: String,
        id: String,
        kind: Kind,
        ok: bool,
    },
}

/// The probe's timing with the API's defaults and minimums applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(p: &Probe, kind: Kind) -> Timing {
        let secs = |v: Option<i32>, default: i32, min: i32| {
            Duration::from_secs(v.unwrap_or(default).max(min) as u64)
        };
        Timing {
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            // Validation requires 1 for liveness and startup; use 1 whatever was given.
            success_threshold: match kind {
                Kind::Liveness | Kind::Startup => 1,
                Kind::Readiness => p.success_threshold.unwrap_or(1).max(1) as u32,
            },
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// The kubelet's result counting: the reported result flips only after the threshold
/// of the other result in a row.
#[derive(Debug, Clone)]
pub struct Counter {
    reported: bool,
    last: Option<bool>,
    run: u32,
}

impl Counter {
    pub fn new(kind: Kind) -> Counter {
        Counter {
            reported: kind == Kind::Liveness,
            last: None,
            run: 0,
        }
    }

    /// How many of the last results in a row were failures.
    pub fn failures_in_a_row(&self) -> u32 {
        if self.last == Some(false) {
            self.run
        } else {
            0
        }
    }

    /// Counts one result; returns the new reported result when it changed.
    pub fn observe(&mut self, ok: bool, t: &Timing) -> Option<bool> {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let needed = if ok {
            t.success_threshold
        } else {
            t.failure_threshold
        };
        if self.run >= needed && self.reported != ok {
            self.reported = ok;
            return Some(ok);
        }
        None
    }
}

/// One container run as the probes see it.
#[derive(Clone)]
pub struct Target {
    pub engine: Engine,
    pub container: Container,
    /// The runtime id of the run.
    pub id: String,
    /// The pod's network namespace (`/proc/<pid>/ns/net` of a process in it).
    pub netns: PathBuf,
    /// When the run started: `initialDelaySeconds` counts from then, as the kubelet's,
    /// also for probes that start later (after a startup probe succeeded).
    pub started: tokio::time::Instant,
}

/// Probes `target` with `probe` until the task is aborted (the run ended) or, for
/// liveness, until it reports a failure.
pub async fn run(probe: Probe, kind: Kind, target: Target, tx: UnboundedSender<Msg>) {
    let t = Timing::of(&probe, kind);
    tokio::time::sleep(t.initial_delay.saturating_sub(target.started.elapsed())).await;
    // The namespace is held by an fd from the start: a pid reused later cannot redirect us.
    let path = target.netns.clone();
    let netns = tokio::task::spawn_blocking(move || std::fs::File::open(&path).map(OwnedFd::from))
        .await
        .ok()
        .and_then(Result::ok);
    let mut counter = Counter::new(kind);
    let mut tick = tokio::time::interval(t.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = attempt(&probe, &target, netns.as_ref(), t.timeout).await;
        let ok = result.is_ok();
        if let Err(output) = result
            && tx
                .send(Msg::Failed {
                    container: target.container.name.clone(),
                    id: target.id.clone(),
                    kind,
                    output,
                })
                .is_err()
        {
            return;
        }
        let mut changed = counter.observe(ok, &t);
        if kind == Kind::Startup && !ok && counter.failures_in_a_row() >= t.failure_threshold {
            // Startup starts as not started, so failures change nothing it reports: its
            // threshold of failures is what ends it.
            changed = Some(false);
        }
        if let Some(now) = changed {
            let msg = Msg::Changed {
                container: target.container.name.clone(),
                id: target.id.clone(),
                kind,
                ok: now,
            };
            let done = match kind {
                Kind::Liveness => !now,
                Kind::Startup => true,
                Kind::Readiness => false,
            };
            if tx.send(msg).is_err() || done {
                return;
            }
        }
    }
}

/// One attempt: Ok, or Err with what the kubelet would print.
async fn attempt(
    probe: &Probe,
    target: &Target,
    netns: Option<&OwnedFd>,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(exec) = &probe.exec {
        let args = exec.command.clone().unwrap_or_default();
        if args.is_empty() {
            return Err("exec probe has no command".into());
        }
        let (engine, id) = (target.engine.clone(), target.id.clone());
        let opts = ExecOptions {
            args: args.clone(),
            timeout: Some(timeout),
            ..Default::default()
        };
        let out = tokio::task::spawn_blocking(move || engine.helper.exec(&id, &opts))
            .await
            .map_err(|e| format!("exec probe task: {e}"))?;
        return match out {
            Ok(o) => match o.outcome {
                ExecOutcome::Exited(0) => Ok(()),
                ExecOutcome::Exited(code) => {
                    let text = String::from_utf8_lossy(&[o.stdout, o.stderr].concat())
                        .trim()
                        .chars()
                        .take(1024)
                        .collect::<String>();
                    Err(format!("command {args:?} exited with {code}: {text}"))
                }
                ExecOutcome::TimedOut => Err(format!(
                    "command {args:?} timed out after {}s",
                    timeout.as_secs()
                )),
                ExecOutcome::Detached(_) => Ok(()),
            },
            Err(e) => Err(strata_runtime::error::chain(&e)),
        };
    }
    let (addr, check) = if let Some(h) = &probe.http_get {
        let tls = match h.scheme.as_deref().unwrap_or("HTTP") {
            s if s.eq_ignore_ascii_case("HTTP") => false,
            s if s.eq_ignore_ascii_case("HTTPS") => true,
            other => return Err(format!("scheme {other:?} is neither HTTP nor HTTPS")),
        };
        let addr = SocketAddr::new(host(h.host.as_deref())?, port(&h.port, &target.container)?);
        let path = h
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or("/".into());
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|x| (x.name.clone(), x.value.clone()))
            .collect();
        (addr, Check::Http { path, headers, tls })
    } else if let Some(tcp) = &probe.tcp_socket {
        let addr = SocketAddr::new(
            host(tcp.host.as_deref())?,
            port(&tcp.port, &target.container)?,
        );
        (addr, Check::Tcp)
    } else if let Some(g) = &probe.grpc {
        let port = port(&IntOrString::Int(g.port), &target.container)?;
        let service = g.service.clone().unwrap_or_default();
        (
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            Check::Grpc { service },
        )
    } else {
        return Err("the probe names no handler (exec, httpGet, tcpSocket or grpc)".into());
    };
    let netns = netns
        .ok_or("the pod's network namespace is gone")?
        .try_clone()
        .map_err(|e| format!("duplicating the namespace fd: {e}"))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    // setns(2) changes only the calling thread, and this thread ends with the attempt:
    // no pool thread is ever left in the pod's namespace (style §4).
    std::thread::Builder::new()
        .name("probe".into())
        .spawn(move || {
            let _ = tx.send(in_netns(netns, addr, check, timeout));
        })
        .map_err(|e| format!("starting a probe thread: {e}"))?;
    match tokio::time::timeout(timeout + Duration::from_secs(1), rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err("the probe thread died".into()),
        Err(_) => Err(format!("timed out after {}s", timeout.as_secs())),
    }
}

/// Loopback only: the pod has no other address strata-node could reach.
fn host(h: Option<&str>) -> Result<IpAddr, String> {
    match h.filter(|h| !h.is_empty()) {
        None | Some("localhost") => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Some(h) => match h.parse::<IpAddr>() {
            Ok(ip) if ip.is_loopback() => Ok(ip),
            _ => Err(format!(
                "host {h:?}: only loopback addresses are probed (the pod has no other)"
            )),
        },
    }
}

fn port(p: &IntOrString, c: &Container) -> Result<u16, String> {
    let n = match p {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(n) => n,
            Err(_) => c
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name))
                .map(|cp| cp.container_port)
                .ok_or_else(|| format!("no container port named {name:?}"))?,
        },
    };
    u16::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("port {n} is out of range"))
}

/// What a network probe checks once connected.
enum Check {
    Tcp,
    Http {
        path: String,
        headers: Vec<(String, String)>,
        /// HTTPS: TLS without verifying the server's certificate, as the kubelet's probe.
        tls: bool,
    },
    Grpc {
        service: String,
    },
}

/// Runs on its own thread: joins the namespace, connects, and for HTTP sends a GET and
/// reads the status line (2xx and 3xx succeed, as the kubelet's); for gRPC calls the
/// standard health service (grpc.health.v1.Health/Check), which must answer SERVING.
fn in_netns(
    netns: OwnedFd,
    addr: SocketAddr,
    check: Check,
    timeout: Duration,
) -> Result<(), String> {
    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("joining the pod's network namespace: {e}"))?;
    let url =
        |path: &str, tls: bool| format!("{}://{addr}{path}", if tls { "https" } else { "http" });
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| match &check {
        Check::Http { path, tls, .. } => {
            format!("Get {:?}: dial tcp {addr}: {e}", url(path, *tls))
        }
        Check::Grpc { .. } => format!(
            "timeout: failed to connect service \"{addr}\" within {}s: {e}",
            timeout.as_secs()
        ),
        Check::Tcp => format!("dial tcp {addr}: {e}"),
    })?;
    let (path, headers, tls) = match check {
        Check::Tcp => return Ok(()),
        Check::Grpc { service } => return grpc_health_check(s, addr, &service, timeout),
        Check::Http { path, headers, tls } => (path, headers, tls),
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let shown = url(&path, tls);
    let code = if tls {
        let conn = rustls::ClientConnection::new(
            insecure_tls_config(),
            rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
        )
        .map_err(|e| format!("Get {shown:?}: {e}"))?;
        http_get(
            &mut rustls::StreamOwned::new(conn, s),
            addr,
            &path,
            &headers,
        )
    } else {
        let mut s = s;
        http_get(&mut s, addr, &path, &headers)
    }
    .map_err(|e| format!("Get {shown:?}: {e}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// Sends a GET for `path` and reads the status code of the answer.
fn http_get(
    s: &mut (impl Read + Write),
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("user-agent") {
        req.push_str("User-Agent: kube-probe/strata\r\n");
    }
    if !has("accept") {
        req.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    s.flush().map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") && head.len() < 1024 {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("malformed response {:?}", line.trim()))
}

/// TLS for HTTPS probes: the kubelet's probe sets InsecureSkipVerify, so any certificate
/// is accepted; the handshake's signatures are still checked against it.
fn insecure_tls_config() -> std::sync::Arc<rustls::ClientConfig> {
    use std::sync::{Arc, OnceLock};
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            // ring, as kube's TLS here: aws-lc-rs would add a C build for a loopback probe,
            // which needs no post-quantum key exchange.
            #[allow(deprecated)]
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `grpc.health.v1.Health/Check` for `service` over the connected stream `s` (h2c, as
/// the kubelet's probe: no TLS), on a runtime of this thread's own, bounded by `timeout`.
fn grpc_health_check(
    s: TcpStream,
    addr: SocketAddr,
    service: &str,
    timeout: Duration,
) -> Result<(), String> {
    s.set_nonblocking(true)
        .map_err(|e| format!("error: health rpc probe failed: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("error: health rpc probe failed: {e}"))?;
    let request = grpc_frame(&health_request(service));
    rt.block_on(async move {
        let call = async {
            let tcp = tokio::net::TcpStream::from_std(s).map_err(|e| e.to_string())?;
            let (client, conn) = h2::client::handshake(tcp)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut client = client.ready().await.map_err(|e| e.to_string())?;
            let req = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("user-agent", "kube-probe/strata")
                .body(())
                .map_err(|e| e.to_string())?;
            let (resp, mut send) = client.send_request(req, false).map_err(|e| e.to_string())?;
            send.send_data(bytes::Bytes::from(request), true)
                .map_err(|e| e.to_string())?;
            let resp = resp.await.map_err(|e| e.to_string())?;
            if resp.status() != http::StatusCode::OK {
                return Err(format!("HTTP status {}", resp.status()));
            }
            // A trailers-only answer (an error) carries grpc-status in the headers.
            grpc_status(resp.headers())?;
            let mut body = resp.into_body();
            let mut data = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
                if data.len() > 64 << 10 {
                    return Err("health response over 64 KiB".into());
                }
            }
            if let Some(trailers) = body.trailers().await.map_err(|e| e.to_string())? {
                grpc_status(&trailers)?;
            }
            Ok(data)
        };
        let data = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Err(format!("error: health rpc probe failed: {e}")),
            Err(_) => {
                return Err(format!(
                    "timeout: health rpc did not complete within {}s",
                    timeout.as_secs()
                ));
            }
        };
        match health_status(&data)? {
            1 => Ok(()),
            other => Err(format!(
                "service unhealthy (responded with {:?})",
                serving_status_name(other)
            )),
        }
    })
}

/// A gRPC message frame: not compressed, big-endian length, then the message.
fn grpc_frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// `HealthCheckRequest { service = 1 }` in protobuf: the field only when non-empty.
fn health_request(service: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if !service.is_empty() {
        out.push(0x0a); // field 1, length-delimited
        put_varint(&mut out, service.len() as u64);
        out.extend_from_slice(service.as_bytes());
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `status` (field 1) of one framed `HealthCheckResponse`; absent means 0, UNKNOWN.
fn health_status(data: &[u8]) -> Result<u64, String> {
    let malformed = || format!("error: health rpc probe failed: malformed response {data:02x?}");
    if data.len() < 5 || data[0] != 0 {
        return Err(malformed());
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    let msg = data.get(5..5 + len).ok_or_else(malformed)?;
    let (mut at, mut status) = (0, 0);
    while at < msg.len() {
        let key = get_varint(msg, &mut at).ok_or_else(malformed)?;
        match key & 7 {
            0 => {
                let v = get_varint(msg, &mut at).ok_or_else(malformed)?;
                if key >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let n = get_varint(msg, &mut at).ok_or_else(malformed)? as usize;
                at = at
                    .checked_add(n)
                    .filter(|e| *e <= msg.len())
                    .ok_or_else(malformed)?;
            }
            1 => at += 8,
            5 => at += 4,
            _ => return Err(malformed()),
        }
    }
    Ok(status)
}

fn serving_status_name(s: u64) -> String {
    match s {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        n => n.to_string(),
    }
}

/// Err with the kubelet's wording when `grpc-status` says the call failed.
fn grpc_status(h: &http::HeaderMap) -> Result<(), String> {
    let Some(code) = h.get("grpc-status") else {
        return Ok(());
    };
    let code = code.to_str().unwrap_or("?");
    if code == "0" {
        return Ok(());
    }
    let name = match code {
        "1" => "Canceled",
        "2" => "Unknown",
        "3" => "InvalidArgument",
        "4" => "DeadlineExceeded",
        "5" => "NotFound",
        "7" => "PermissionDenied",
        "12" => "Unimplemented",
        "13" => "Internal",
        "14" => "Unavailable",
        "16" => "Unauthenticated",
        other => other,
    };
    let msg = h
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default();
    Err(format!("rpc error: code = {name} desc = {msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(success: u32, failure: u32) -> Timing {
        Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn health_messages_encode_and_decode_as_protobuf() {
        assert_eq!(health_request(""), Vec::<u8>::new());
        assert_eq!(health_request("db"), b"\x0a\x02db");
        assert_eq!(grpc_frame(b"ab"), b"\x00\x00\x00\x00\x02ab");
        let long = "s".repeat(200);
        let req = health_request(&long);
        assert_eq!(&req[..3], &[0x0a, 0xc8, 0x01], "a two-byte length");
        // status = SERVING, NOT_SERVING, absent (UNKNOWN), after an unknown field.
        assert_eq!(health_status(&grpc_frame(&[0x08, 0x01])), Ok(1));
        assert_eq!(health_status(&grpc_frame(&[0x08, 0x02])), Ok(2));
        assert_eq!(health_status(&grpc_frame(&[])), Ok(0));
        assert_eq!(
            health_status(&grpc_frame(&[0x12, 0x01, 0x7a, 0x08, 0x01])),
            Ok(1)
        );
        for bad in [
            &b""[..],
            &[1, 0, 0, 0, 0],
            &[0, 0, 0, 0, 9, 0x08],
            &[0, 0, 0, 0, 1, 0x08],
        ] {
            assert!(health_status(bad).is_err(), "{bad:?}");
        }
        assert_eq!(serving_status_name(2), "NOT_SERVING");
    }

    #[test]
    fn thresholds_count_results_in_a_row() {
        let t = timing(2, 3);
        let mut r = Counter::new(Kind::Readiness);
        assert_eq!(r.observe(true, &t), None, "one success of two");
        assert_eq!(r.observe(false, &t), None, "not ready already");
        assert_eq!(r.observe(true, &t), None);
        assert_eq!(r.observe(true, &t), Some(true));
        assert_eq!(r.observe(true, &t), None, "no change, no report");
        assert_eq!(r.observe(false, &t), None);
        assert_eq!(r.observe(false, &t), None);
        assert_eq!(r.observe(true, &t), None, "the failure run is broken");
        for _ in 0..2 {
            assert_eq!(r.observe(false, &t), None);
        }
        assert_eq!(r.observe(false, &t), Some(false), "three in a row");

        let mut l = Counter::new(Kind::Liveness);
        let t = timing(1, 1);
        assert_eq!(l.observe(true, &t), None, "alive from the start");
        assert_eq!(l.observe(false, &t), Some(false));
    }

    #[test]
    fn defaults_and_minimums_as_the_api() {
        let t = Timing::of(&Probe::default(), Kind::Readiness);
        assert_eq!(t, timing(1, 3).with_period(10));
        let p = Probe {
            period_seconds: Some(0),
            success_threshold: Some(5),
            timeout_seconds: Some(-1),
            ..Default::default()
        };
        let l = Timing::of(&p, Kind::Liveness);
        assert_eq!(l.period, Duration::from_secs(1));
        assert_eq!(l.timeout, Duration::from_secs(1));
        assert_eq!(l.success_threshold, 1, "liveness always needs one success");
        assert_eq!(Timing::of(&p, Kind::Readiness).success_threshold, 5);
    }

    impl Timing {
        fn with_period(mut self, secs: u64) -> Timing {
            self.period = Duration::from_secs(secs);
            self
        }
    }

    #[test]
    fn only_loopback_hosts_and_named_ports() {
        assert_eq!(host(None).unwrap(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(host(Some("::1")).unwrap().to_string(), "::1");
        assert!(host(Some("10.0.0.1")).unwrap_err().contains("loopback"));
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "ports": [{"name": "http", "containerPort": 8080}]}))
        .unwrap();
        assert_eq!(port(&IntOrString::String("http".into()), &c).unwrap(), 8080);
        assert_eq!(port(&IntOrString::Int(81), &c).unwrap(), 81);
        assert!(port(&IntOrString::String("x".into()), &c).is_err());
        assert!(port(&IntOrString::Int(70000), &c).is_err());
    }
}
