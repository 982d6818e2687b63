//! A bounded load generator for the balancing tests: `workers` keep-alive
//! HTTP/1.1 connections to edgebox's plain-HTTP listener, each sending
//! requests one after another until `count` have been sent in all or the
//! deadline passes. Every response's status and latency is kept; a request
//! that got no response (connection refused, reset, closed) counts as an
//! error, and its worker reconnects.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone)]
pub struct Load {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    pub workers: usize,
    pub count: usize,
    pub deadline: Duration,
    /// Pause between a worker's requests.
    pub pause: Duration,
}

impl Load {
    pub fn new(addr: SocketAddr, host: &str, path: &str) -> Self {
        Self {
            addr,
            host: host.to_owned(),
            path: path.to_owned(),
            workers: 4,
            count: 1_000,
            deadline: Duration::from_secs(60),
            pause: Duration::ZERO,
        }
    }
}

/// What one run saw.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// (status, latency, which backend answered per `x-backend`).
    pub responses: Vec<(u16, Duration, String)>,
    /// Requests that got no response at all, with why.
    pub errors: Vec<String>,
    pub took: Duration,
}

impl Report {
    pub fn count(&self, status: u16) -> usize {
        self.responses.iter().filter(|r| r.0 == status).count()
    }

    /// Everything that was not a 2xx, errors included.
    pub fn failed(&self) -> usize {
        self.errors.len()
            + self
                .responses
                .iter()
                .filter(|r| !(200..300).contains(&r.0))
                .count()
    }

    /// The `q`-th latency quantile of the responses.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut l: Vec<Duration> = self.responses.iter().map(|r| r.1).collect();
        if l.is_empty() {
            return Duration::ZERO;
        }
        l.sort();
        let i = ((q * l.len() as f64).ceil() as usize).clamp(1, l.len()) - 1;
        l[i]
    }

    /// How many responses each backend gave.
    pub fn by_backend(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for r in &self.responses {
            *m.entry(r.2.clone()).or_default() += 1;
        }
        m
    }

    pub fn summary(&self) -> String {
        format!(
            "{} responses ({} 2xx, {} 503), {} errors in {:.2} s; p50 {:.2} ms, p99 {:.2} ms; by backend {:?}",
            self.responses.len(),
            self.responses
                .iter()
                .filter(|r| (200..300).contains(&r.0))
                .count(),
            self.count(503),
            self.errors.len(),
            self.took.as_secs_f64(),
            self.quantile(0.5).as_secs_f64() * 1e3,
            self.quantile(0.99).as_secs_f64() * 1e3,
            self.by_backend()
        )
    }
}

/// A load running on its own thread; [`Running::stop`] ends it early,
/// [`Running::join`] waits for its report.
pub struct Running {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Report>,
    sent: Arc<AtomicUsize>,
}

impl Running {
    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        self.join()
    }

    pub fn join(self) -> Report {
        self.thread.join().unwrap()
    }

    /// Requests sent so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }
}

/// Starts `load` on a thread of its own.
pub fn start(load: Load) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let (s, n) = (Arc::clone(&stop), Arc::clone(&sent));
    let thread = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(load, s, n))
    });
    Running { stop, thread, sent }
}

/// Runs `load` to its end.
pub fn run_blocking(load: Load) -> Report {
    start(load).join()
}

async fn run(load: Load, stop: Arc<AtomicBool>, sent: Arc<AtomicUsize>) -> Report {
    let report = Arc::new(Mutex::new(Report::default()));
    let start = Instant::now();
    let until = start + load.deadline;
    let mut tasks = Vec::new();
    for _ in 0..load.workers {
        let (load, stop, sent, report) = (
            load.clone(),
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&report),
        );
        tasks.push(tokio::spawn(async move {
            let mut sender = None;
            loop {
                if stop.load(Ordering::SeqCst) || Instant::now() >= until {
                    return;
                }
                if sent.fetch_add(1, Ordering::SeqCst) >= load.count {
                    return;
                }
                let result = one(&load, &mut sender).await;
                if result.is_err() {
                    sender = None;
                }
                {
                    let mut r = report.lock().unwrap();
                    match result {
                        Ok(ok) => r.responses.push(ok),
                        Err(e) => r.errors.push(e),
                    }
                }
                if !load.pause.is_zero() {
                    tokio::time::sleep(load.pause).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut r = report.lock().unwrap().clone();
    r.took = start.elapsed();
    r
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>;

async fn one(load: &Load, sender: &mut Option<Sender>) -> Result<(u16, Duration, String), String> {
    let started = Instant::now();
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let tcp = tokio::net::TcpStream::connect(load.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).ok();
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        *sender = Some(s);
    }
    let s = sender.as_mut().unwrap();
    s.ready().await.map_err(|e| format!("ready: {e}"))?;
    let req = hyper::Request::get(&load.path)
        .header("host", &load.host)
        .body(Empty::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), s.send_request(req))
        .await
        .map_err(|_| "no response in 30 s".to_owned())?
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let backend = response
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok((status, started.elapsed(), backend))
}
