//! The accept loop: one task per connection, a cap on open connections, and a shutdown
//! that stops accepting, asks every connection to close (320 CONNECTION_FORCED) and waits
//! for them up to a deadline.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::connection::Connection;
use super::Server;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves until `shutdown` turns true, then closes connections within the configured time.
pub async fn serve(
    listener: TcpListener,
    server: Arc<Server>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let open = server.connections.fetch_add(1, Ordering::AcqRel);
                    if open >= server.config.connections_max {
                        server.connections.fetch_sub(1, Ordering::AcqRel);
                        tracing::warn!(%peer, "connection limit reached, refusing");
                        drop(stream);
                        continue;
                    }
                    let connection = Connection::new(stream, peer, Arc::clone(&server), shutdown.clone());
                    let server = Arc::clone(&server);
                    tasks.spawn(async move {
                        connection.run().await;
                        server.connections.fetch_sub(1, Ordering::AcqRel);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let deadline = Duration::from_millis(server.config.shutdown_timeout_ms);
    if tokio::time::timeout(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            remaining = tasks.len(),
            "shutdown deadline passed, dropping connections"
        );
        tasks.abort_all();
    }
}
