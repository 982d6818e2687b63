//! `GET /v1/update` (the boot slots, the running version, a failed trial)
//! and `POST /v1/update` (an update file, checked as it streams into the
//! inactive slot; see [`crate::update`]).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use super::{json_response, ApiError, Body};
use crate::control::Control;
use crate::update::esp::Esp;
use crate::update::file::{Refused, Verifier};
use crate::update::{self, slots, Slot};

/// The slots as last read, and when: the ESP is mounted to read them, so
/// scrapes within a few seconds share one reading.
static CACHE: Mutex<Option<(Instant, update::View)>> = Mutex::new(None);
const FRESH: Duration = Duration::from_secs(5);

pub fn view(c: &Control) -> update::View {
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((at, v)) = &*cache {
        if at.elapsed() < FRESH {
            return v.clone();
        }
    }
    let running = update::running_slot();
    let slots = if c.shared.appliance {
        Esp::mount()
            .and_then(|esp| esp.slots())
            .map_err(|e| e.to_string())
    } else {
        Err("edgebox does not run as the appliance's init here; updates are for the appliance image".to_owned())
    };
    let v = update::view(slots.as_ref().map_err(String::as_str), running, &c.data);
    *cache = Some((Instant::now(), v.clone()));
    v
}

fn forget() {
    if let Ok(mut cache) = CACHE.lock() {
        *cache = None;
    }
}

pub fn get(c: &Control) -> Response<Body> {
    json_response(StatusCode::OK, &view(c))
}

/// What the writing thread is told.
enum Msg {
    Data(Bytes),
    Commit { version: String },
}

/// The thread that writes the inactive slot: blocking file I/O stays off
/// the control thread.
struct Writer {
    tx: tokio::sync::mpsc::Sender<Msg>,
    done: tokio::sync::oneshot::Receiver<Result<(Slot, u64), String>>,
}

impl Writer {
    /// Mounts the ESP and starts the slot the update goes to.
    async fn start(running: Slot, version: &str) -> Result<Writer, ApiError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(8);
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let options = update::current_options();
        let version = version.to_owned();
        std::thread::Builder::new()
            .name("update".into())
            .spawn(move || {
                let begun = Esp::mount().map_err(|e| e.to_string()).and_then(|esp| {
                    let (slot, generation) = esp
                        .slots()
                        .map_err(|e| e.to_string())?
                        .install_target(running)?;
                    let w = esp.begin(slot).map_err(|e| format!("slot {slot}: {e}"))?;
                    Ok((esp, w, slot, generation))
                });
                let (esp, mut w, slot, generation) = match begun {
                    Ok(b) => {
                        let _ = started_tx.send(Ok(()));
                        b
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                tracing::info!("update: writing edgebox image {version} into slot {slot}");
                let mut result = Err("the upload ended before the update was checked".to_owned());
                while let Some(msg) = rx.blocking_recv() {
                    match msg {
                        Msg::Data(b) => {
                            if let Err(e) = w.write(&b) {
                                result = Err(format!("writing slot {slot}: {e}"));
                                break;
                            }
                        }
                        Msg::Commit { version } => {
                            let entry = slots::entry_text(slot, generation, &version, &options);
                            let _ = done_tx.send(
                                w.commit(&entry)
                                    .map(|()| (slot, generation))
                                    .map_err(|e| format!("writing slot {slot}: {e}")),
                            );
                            drop(esp);
                            return;
                        }
                    }
                }
                w.abort();
                drop(esp);
                let _ = done_tx.send(result.map(|()| (slot, generation)));
            })
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        match started_rx.await {
            Ok(Ok(())) => Ok(Writer { tx, done }),
            Ok(Err(e)) => Err(ApiError::new(StatusCode::CONFLICT, e)),
            Err(_) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the update thread ended",
            )),
        }
    }

    async fn send(&self, data: &[u8]) -> Result<(), ApiError> {
        self.tx
            .send(Msg::Data(Bytes::copy_from_slice(data)))
            .await
            .map_err(|_| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the update thread ended")
            })
    }

    /// Commits (with the checked version) or, on `None`, abandons the slot.
    async fn finish(self, version: Option<String>) -> Result<(Slot, u64), String> {
        if let Some(version) = version {
            let _ = self.tx.send(Msg::Commit { version }).await;
        }
        drop(self.tx);
        self.done
            .await
            .unwrap_or_else(|_| Err("the update thread ended".into()))
    }
}

fn refused(e: Refused) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, e.0)
}

pub async fn upload(
    control: &Rc<RefCell<Control>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if !control.borrow().shared.appliance {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "updates are for the appliance image; this edgebox does not run as its init",
        ));
    }
    let running = update::running_slot().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "this system was not started from a boot slot (no edgebox.slot= on its command line)",
        )
    })?;
    let accepted = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "accept_no_rollback=true"));
    let mut verifier = Verifier::new(update::trust());
    let mut writer: Option<Writer> = None;
    let mut body = req.into_body();
    let mut refusal = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                refusal = Some(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                ));
                break;
            }
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let payload = match verifier.push(data) {
            Ok(p) => p,
            Err(e) => {
                refusal = Some(refused(e));
                break;
            }
        };
        if payload.is_empty() {
            continue;
        }
        if writer.is_none() {
            let format = verifier.header().map_or(0, |h| h.data_format);
            if let Err(e) = update::rollback_check(format, accepted) {
                refusal = Some(ApiError::new(StatusCode::CONFLICT, e));
                break;
            }
            let version = verifier.header().map_or("", |h| h.version.as_str());
            match Writer::start(running, version).await {
                Ok(w) => writer = Some(w),
                Err(e) => {
                    refusal = Some(e);
                    break;
                }
            }
        }
        if let Some(w) = &writer {
            if let Err(e) = w.send(payload).await {
                refusal = Some(e);
                break;
            }
        }
    }
    let checked = match refusal {
        Some(e) => Err(e),
        None => verifier.finish().map_err(refused),
    };
    let (header, w) = match (checked, writer) {
        (Ok(h), Some(w)) => (h, w),
        (result, writer) => {
            if let Some(w) = writer {
                let _ = w.finish(None).await;
            }
            forget();
            let e = result
                .err()
                .unwrap_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "the update is empty"));
            tracing::warn!("update refused: {}", e.message);
            // Read what is left (bounded), so the client, still sending,
            // gets the answer rather than a reset.
            let mut left = update::file::MAX_PAYLOAD;
            while let Some(Ok(frame)) = body.frame().await {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                match left.checked_sub(n) {
                    Some(l) => left = l,
                    None => break,
                }
            }
            return Err(e);
        }
    };
    let (slot, generation) = w
        .finish(Some(header.version.clone()))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    forget();
    tracing::info!(
        "update: slot {slot} holds edgebox image {}; it boots on trial at the next reboot",
        header.version
    );
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "slot": slot,
            "version": header.version,
            "generation": generation,
            "signed": header.signed,
            "next": "reboot (edgebox ctl reboot) to boot it on trial; if it is not healthy within 180 s the appliance falls back by itself",
        }),
    ))
}
