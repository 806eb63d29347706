//! flanneld's health endpoint (`--healthz-ip`, `--healthz-port`): `GET /healthz` answers
//! 200 with the body `flanneld is running` while the agent runs, any other path 404 as
//! Go's ServeMux does. One request per connection, read within a bounded time and size;
//! served on the agent's runtime, so an agent that is stuck answers nothing.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::log::log;

/// A request head larger than this, or slower than READ_WAIT, gets no answer.
const MAX_HEAD: usize = 8 << 10;
const READ_WAIT: Duration = Duration::from_secs(5);

/// Binds the endpoint (a failure stops the agent, as it stops flanneld).
pub async fn bind(at: SocketAddr) -> Result<TcpListener, String> {
    let l = TcpListener::bind(at)
        .await
        .map_err(|e| format!("healthz: listening on {at}: {e}"))?;
    log(&format!("healthz on http://{at}/healthz"));
    Ok(l)
}

/// Answers connections until the agent ends.
pub async fn serve(l: TcpListener) {
    loop {
        match l.accept().await {
            Ok((conn, _)) => {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(READ_WAIT, answer(conn)).await;
                });
            }
            // Out of descriptors and the like: wait instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn answer(mut conn: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let reply = response(&head);
    conn.write_all(reply.as_bytes()).await?;
    conn.shutdown().await
}

/// The reply to a request head: flanneld's handler for `/healthz` (any method, any
/// query), Go's NotFound for the rest.
fn response(head: &[u8]) -> String {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default();
    let target = words.next().unwrap_or_default();
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let (status, extra, body) = if path == "/healthz" {
        ("200 OK", "", "flanneld is running")
    } else {
        // Go's http.NotFound, through http.Error
        (
            "404 Not Found",
            "X-Content-Type-Options: nosniff\r\n",
            "404 page not found\n",
        )
    };
    let shown = if method == "HEAD" { "" } else { body };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{shown}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_answers_as_flanneld() {
        let ok = response(b"GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nflanneld is running"), "{ok}");
        let other = response(b"GET /healthz/x HTTP/1.1\r\n\r\n");
        assert!(other.starts_with("HTTP/1.1 404 Not Found\r\n"), "{other}");
        assert!(other.ends_with("404 page not found\n"), "{other}");
        let head = response(b"HEAD /healthz HTTP/1.1\r\n\r\n");
        assert!(
            head.ends_with("Content-Length: 19\r\nConnection: close\r\n\r\n"),
            "{head}"
        );
    }
}
