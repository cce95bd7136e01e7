//! The HTTP side: `/metrics`, `/healthz` and `/readyz`, each answered by asking the
//! supervisor's event loop (it owns every figure) over a channel.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};

use super::{Ask, CONTENT_TYPE};
use crate::control::State;

/// The default metrics port: 9464 rather than 9090, so as not to collide with a local
/// Prometheus.
pub const DEFAULT_PORT: u16 = 9464;

/// Why the endpoint could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("metrics: metrics port {} is in use on {}: pass --metrics ADDR:PORT or --metrics off", .0.port(), .0.ip())]
    InUse(SocketAddr),
    #[error("metrics: cannot bind the metrics endpoint {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// Binds the endpoint. Port in use is an error here, before any worker starts.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            Error::InUse(addr)
        } else {
            Error::Bind { addr, error: e }
        }
    })
}

pub async fn serve(listener: tokio::net::TcpListener, asks: mpsc::UnboundedSender<Ask>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                crate::listeners::after_accept_error("metrics", &e).await;
                continue;
            }
        };
        let asks = asks.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, asks.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    asks: mpsc::UnboundedSender<Ask>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            content_type.parse().expect("valid header"),
        );
        Ok(r)
    };
    let unavailable = || {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "supervisor not answering\n".into(),
        )
    };
    match req.uri().path() {
        "/metrics" => {
            let (tx, rx) = oneshot::channel();
            if asks.send(Ask::Metrics(tx)).is_err() {
                return unavailable();
            }
            match rx.await {
                Ok(body) => reply(StatusCode::OK, CONTENT_TYPE, body),
                Err(_) => unavailable(),
            }
        }
        path @ ("/healthz" | "/readyz") => {
            let (tx, rx) = oneshot::channel();
            if asks.send(Ask::Status(tx)).is_err() {
                return unavailable();
            }
            let Ok(status) = rx.await else {
                return unavailable();
            };
            let up = status.slots.iter().filter(|s| s.state == State::Up).count();
            if path == "/readyz" && up == 0 {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no worker slot is up\n".into(),
                )
            } else {
                reply(
                    StatusCode::OK,
                    "text/plain",
                    format!("ok: {up} of {} slots up\n", status.slots.len()),
                )
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "see /metrics, /healthz, /readyz\n".into(),
        ),
    }
}
