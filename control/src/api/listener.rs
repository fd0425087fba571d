//! Accepting API connections with limits, before any request is
//! authenticated: a cap on open connections, a deadline for each request's
//! headers (which also closes idle keep-alive connections), a deadline for
//! its body (in [`super::server`]), and a deadline for shutdown.
//!
//! Without these, anyone who can reach the port holds the daemon's memory
//! and descriptors with connections that never finish a request (1,100
//! idle connections exhausted the descriptors; 400 half-sent 1 MiB bodies
//! took 425 MiB), and SIGTERM waits forever for one open client.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::server::{router, ApiState};

/// The limits on connections that have not (yet) sent a whole request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; one more is closed as soon as it is
    /// accepted. The SDKs keep about ten per client.
    pub max_connections: usize,
    /// From the moment the server waits for a request (after accepting, or
    /// after answering the previous one on a keep-alive connection) to its
    /// last header byte. The SDKs reconnect transparently when an idle
    /// connection was closed.
    pub header_timeout: Duration,
    /// From the end of the headers to the last byte of the body.
    pub body_timeout: Duration,
    /// How long shutdown waits for requests in flight before it closes
    /// their connections.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves the API on `listener` under `limits` until `shutdown` completes,
/// then lets requests in flight finish for at most `limits.shutdown_grace`.
/// Returns the number of connections still open when the grace ran out.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> usize {
    let service = TowerToHyperService::new(router(state.with_body_timeout(limits.body_timeout)));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    let mut refused: u64 = 0;
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    log::warn!("accepting an API connection: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                log::warn!(
                    "{} API connections open (the limit): {refused} refused so far",
                    limits.max_connections
                );
            }
            drop(stream);
            continue;
        };
        let connection = builder.serve_connection(TokioIo::new(stream), service.clone());
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that goes away or times out is not the server's error.
            if let Err(err) = connection.await {
                log::debug!("API connection ended: {err}");
            }
            drop(slot);
        });
    }
    drop(listener);
    let open = limits.max_connections - slots.available_permits();
    if open > 0 {
        log::info!(
            "waiting up to {:?} for {open} API connection(s)",
            limits.shutdown_grace
        );
    }
    match tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => 0,
        Err(_) => {
            let left = limits.max_connections - slots.available_permits();
            log::warn!("closing {left} API connection(s) still open after the shutdown grace");
            left
        }
    }
}
