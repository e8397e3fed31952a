//! `--metrics-addr`: the run's metrics in the Prometheus text format, and its health.
//!
//! - `GET /metrics`: every `keel_*` metric ([`keel::metrics`]), from the `metrics` facade's
//!   Prometheus recorder installed here;
//! - `GET /health`: 200 while the process serves (liveness);
//! - `GET /ready`: 200 once the run has recovered and processes input; 503 with the reason
//!   in the body while it recovers, while its input is paused (a circuit breaker, an error
//!   budget, a throttled dependency) and after it ended.
//!
//! The server runs on a thread of its own, so a busy or stuck pipeline thread never stops
//! a scrape; it binds to loopback unless the user names another address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// What `/ready` reports on.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<Watched>>);

#[derive(Clone, Default)]
enum Watched {
    #[default]
    Starting,
    Pipeline(Arc<keel::runtime::Progress>),
    /// A queue worker: ready while it serves.
    Worker,
}

impl Readiness {
    /// Reports on a pipeline's `progress` from now on.
    pub fn watch(&self, progress: Arc<keel::runtime::Progress>) {
        if let Ok(mut p) = self.0.lock() {
            *p = Watched::Pipeline(progress);
        }
    }

    /// A queue worker: ready from now on.
    pub fn worker(&self) {
        if let Ok(mut p) = self.0.lock() {
            *p = Watched::Worker;
        }
    }

    fn state(&self) -> (StatusCode, String) {
        let unavailable = |why: String| (StatusCode::SERVICE_UNAVAILABLE, why);
        let watched = self.0.lock().map(|p| p.clone()).unwrap_or_default();
        let p = match watched {
            Watched::Starting => return unavailable("starting\n".into()),
            Watched::Worker => return (StatusCode::OK, "ready\n".into()),
            Watched::Pipeline(p) => p,
        };
        if p.snapshot().finished {
            return unavailable("finished\n".into());
        }
        match (p.is_ready(), p.paused()) {
            (false, _) => unavailable("recovering\n".into()),
            (true, Some(why)) => unavailable(format!("paused: {why}\n")),
            (true, None) => (StatusCode::OK, "ready\n".into()),
        }
    }
}

/// The Prometheus recorder, installed once per process.
fn recorder() -> Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    // durations as histograms with buckets (aggregatable across workers), not summaries
    let buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .context("setting histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    keel::metrics::describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Parses `--metrics-addr`: `host:port`, or `:port` / a bare port for loopback.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let full = if let Some(port) = s.strip_prefix(':') {
        format!("127.0.0.1:{port}")
    } else if s.parse::<u16>().is_ok() {
        format!("127.0.0.1:{s}")
    } else {
        s.to_owned()
    };
    full.parse()
        .map_err(|_| format!("`{s}` is not an address (like 127.0.0.1:9464, or :9464 for loopback)"))
}

/// Starts serving on `addr`; returns the bound address (port 0 picks a free one).
pub fn start(addr: SocketAddr, ready: Readiness) -> Result<SocketAddr> {
    let handle = recorder()?;
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("binding the metrics endpoint to {addr}"))?;
    let bound = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new().name("keel-metrics".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "the metrics endpoint cannot start");
                return;
            }
        };
        rt.block_on(serve(listener, handle, ready));
    })?;
    tracing::info!(address = %bound, "serving /metrics, /health and /ready");
    Ok(bound)
}

async fn serve(listener: std::net::TcpListener, handle: PrometheusHandle, ready: Readiness) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the metrics endpoint cannot listen");
            return;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (handle, ready) = (handle.clone(), ready.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (handle, ready) = (handle.clone(), ready.clone());
                async move { Ok::<_, std::convert::Infallible>(respond(req.uri().path(), &handle, &ready)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

fn respond(path: &str, handle: &PrometheusHandle, ready: &Readiness) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        "/health" => (StatusCode::OK, "text/plain; charset=utf-8", "ok\n".to_owned()),
        "/ready" => {
            let (status, body) = ready.state();
            (status, "text/plain; charset=utf-8", body)
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: /metrics, /health, /ready\n".to_owned(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(parse_addr(":9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(parse_addr("9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(parse_addr("0.0.0.0:9464").unwrap().to_string(), "0.0.0.0:9464");
        assert!(parse_addr("localhost:x").is_err());
    }
}
