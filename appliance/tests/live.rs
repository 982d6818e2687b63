//! Config changes under load: nothing in flight may notice.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Requests each load worker sends at most.
const MAX_REQUESTS: usize = 4000;
const WORKERS: usize = 4;
const CHANGES: usize = 100;

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
}

/// A keep-alive HTTPS/1.1 client sending GETs until `stop` (or
/// [`MAX_REQUESTS`]); a broken connection counts as a failure.
async fn load(
    pki: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let tls = tokio_rustls::TlsConnector::from(pki);
    let mut send = connect_h1(&tls, addr).await;
    for _ in 0..MAX_REQUESTS {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let req = hyper::Request::get("/")
            .header("host", "shop.test")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let ok = match send.send_request(req).await {
            Ok(resp) => resp.status() == 200 && resp.into_body().collect().await.is_ok(),
            Err(_) => false,
        };
        let counter = if ok { &tally.ok } else { &tally.failed };
        counter.fetch_add(1, Ordering::SeqCst);
        if !ok {
            break;
        }
    }
}

/// A keep-alive HTTPS/1.1 connection to `shop.test` at `addr`.
async fn connect_h1(
    tls: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tls.connect(server_name("shop.test"), tcp).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

#[test]
fn a_hundred_config_changes_under_load_drop_nothing() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let shop = Shop::start(&[a.addr, b.addr], 2, |_| {});
    let addr = shop.eb.addr("https");
    let client = Arc::new(tls_client(&shop.pki, &[b"http/1.1"]));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<()>();
    let (changed_tx, changed_rx) = tokio::sync::oneshot::channel::<()>();

    let driver = {
        let (client, stop, tally) = (Arc::clone(&client), Arc::clone(&stop), Arc::clone(&tally));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // A WebSocket and a 6 s download, both opened before the changes.
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(&client));
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let stream = tls.connect(server_name("shop.test"), tcp).await.unwrap();
                let url = format!("wss://shop.test:{}/ws", addr.port());
                let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
                ws.send(Message::text("before")).await.unwrap();
                assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

                let mut send = connect_h1(&tls, addr).await;
                let req = hyper::Request::get("/stream?chunks=60&ms=100")
                    .header("host", "shop.test")
                    .body(Empty::<bytes::Bytes>::new())
                    .unwrap();
                let download = tokio::spawn(async move {
                    let resp = send.send_request(req).await.unwrap();
                    resp.into_body().collect().await.map(|b| b.to_bytes())
                });
                let workers: Vec<_> = (0..WORKERS)
                    .map(|_| {
                        tokio::spawn(load(
                            Arc::clone(&client),
                            addr,
                            Arc::clone(&stop),
                            Arc::clone(&tally),
                        ))
                    })
                    .collect();
                opened_tx.send(()).unwrap();

                changed_rx.await.unwrap();
                ws.send(Message::text("after")).await.unwrap();
                let echoed = ws.next().await.unwrap().unwrap();
                ws.close(None).await.unwrap();
                stop.store(true, Ordering::SeqCst);
                for w in workers {
                    w.await.unwrap();
                }
                (echoed, download.await.unwrap())
            })
        })
    };

    opened_rx.recv_timeout(DEADLINE).unwrap();
    let eb = &shop.eb;
    let b_path = format!("/v1/pools/app/backends/{}", b.addr);
    for i in 1..=CHANGES {
        match i % 10 {
            // Routes change too, not only weights.
            0 => {
                let routes = json!([
                    {"path_prefix": format!("/extra{i}"), "action": {"respond": {"body": "extra\n"}}},
                    {"action": {"proxy": {"pool": "app"}}}
                ]);
                eb.api("PUT", "/v1/routes", Some(&routes.to_string()), &[])
                    .expect(200);
            }
            _ => {
                let weight = json!({"weight": 1 + i % 5}).to_string();
                eb.api("PATCH", &b_path, Some(&weight), &[]).expect(200);
            }
        }
    }
    // The last change: b drained.
    eb.api("POST", &format!("{b_path}/drain"), None, &[])
        .expect(200);
    changed_tx.send(()).unwrap();
    let (echoed, download) = driver.join().unwrap();

    let ok = tally.ok.load(Ordering::SeqCst);
    let failed = tally.failed.load(Ordering::SeqCst);
    eprintln!(
        "{ok} requests during {} config changes, {failed} failed",
        CHANGES + 1
    );
    assert_eq!(failed, 0);
    assert!(
        ok > 100,
        "the load ran alongside the changes ({ok} requests)"
    );
    assert_eq!(echoed, Message::text("after"), "the WebSocket survived");
    let body = download.expect("the download survived");
    assert_eq!(
        body.iter().filter(|&&c| c == b'\n').count(),
        60,
        "every chunk arrived"
    );

    let config = eb.api("GET", "/v1/config", None, &[]).expect(200).json();
    assert_eq!(
        config["routes"][0]["path_prefix"],
        format!("/extra{CHANGES}")
    );
    assert_eq!(config["pools"][0]["backends"][1]["state"], "draining");
    let served: Vec<String> = (0..6)
        .map(|_| {
            let out = shop.curl(&["-sS", "-D", "-", "-o", "/dev/null", &shop.url("/")]);
            out.stdout
                .lines()
                .find_map(|l| l.strip_prefix("x-backend: "))
                .unwrap()
                .trim()
                .to_owned()
        })
        .collect();
    assert!(
        served.iter().all(|s| s == "a"),
        "the last change (b drained) is what serves: {served:?}"
    );
}
