//! Holds many idle TLS connections to an appliance, as its own process so
//! that a test can go past its own open-files limit with several of them.
//!
//!     qt-idle ADDRESS COUNT
//!
//! Opens COUNT connections to ADDRESS (8 at a time), each with one
//! keep-alive request answered, prints `open COUNT` and waits. Each line
//! read on stdin makes it print `still open N`; end of input ends it.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, count] = &args[..] else {
        bail!("usage: qt-idle ADDRESS COUNT");
    };
    let addr: SocketAddr = addr.parse().context("ADDRESS")?;
    let count: usize = count.parse().context("COUNT")?;
    let config = Arc::new(edgebox::ctl::client::tls_config(
        edgebox::ctl::client::Trust::Insecure,
    )?);
    const THREADS: usize = 8;
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let config = Arc::clone(&config);
            let n = count / THREADS + usize::from(t < count % THREADS);
            std::thread::spawn(move || (0..n).map(|_| open(addr, &config)).collect())
        })
        .collect();
    let mut conns: Vec<Tls> = Vec::with_capacity(count);
    for w in workers {
        let opened: Result<Vec<Tls>> = w.join().expect("a client thread");
        conns.extend(opened?);
    }
    println!("open {}", conns.len());
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        line?;
        let open = conns.iter().filter(|c| still_open(&c.sock)).count();
        println!("still open {open}");
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// A connection after one request answered, left idle.
fn open(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Result<Tls> {
    let name = rustls::pki_types::ServerName::try_from("edgebox.invalid")?;
    let conn = rustls::ClientConnection::new(Arc::clone(config), name)?;
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: edgebox\r\n\r\n")?;
    // The head, then as much body as it announces.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tls.read(&mut buf)?;
        if n == 0 {
            bail!("closed before the response ended");
        }
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            bail!("not a 200: {head}");
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .context("no content-length")?;
        if got.len() >= end + 4 + length {
            return Ok(tls);
        }
    }
}

/// Open: nothing to read and no end of stream.
fn still_open(sock: &TcpStream) -> bool {
    let _ = sock.set_nonblocking(true);
    let mut byte = [0u8; 1];
    let open = matches!(sock.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    let _ = sock.set_nonblocking(false);
    open
}
