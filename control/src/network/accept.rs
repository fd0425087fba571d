//! The accept loop the daemon's small TCP relays share (the DNS relay's
//! TCP side, the loopback port forwards): each connection handled on a
//! task of its own, at most a fixed number at once (more are closed at
//! once), and an accept error (descriptors exhausted) never ending the
//! loop or spinning it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Accepts on `listener` forever, running `handle` for each connection
/// with at most `limit` running; `what` names the relay in the log.
pub async fn bounded<F, Fut>(listener: TcpListener, limit: usize, what: String, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let open = Arc::new(Semaphore::new(limit));
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                log::warn!("{what}: accepting: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            continue;
        };
        let work = handle(client);
        tokio::spawn(async move {
            let _permit = permit;
            work.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_and_the_rest_served() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let at = listener.local_addr().expect("addr");
        let (release, hold) = tokio::sync::watch::channel(false);
        tokio::spawn(bounded(listener, 2, "test".into(), move |s| {
            let mut hold = hold.clone();
            async move {
                let _s = s;
                let _ = hold.wait_for(|go| *go).await;
            }
        }));
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(TcpStream::connect(at).await.expect("connect"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The third is accepted by the kernel, then closed by the loop.
        let mut third = TcpStream::connect(at).await.expect("connect");
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // Released, the two end, and a new one is served again.
        release.send(true).expect("release");
        for mut s in held {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("ended in time")
                .unwrap_or(0);
            assert_eq!(n, 0);
        }
    }
}
