//! `GET /v1/acme` (every managed name: its certificate's dates and issuer,
//! its ACME state, the last error) and `POST /v1/acme/{name}/renew`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use http::{Response, StatusCode};
use serde::Serialize;

use super::{json_response, ApiError, Body};
use crate::control::Control;

#[derive(Debug, Serialize)]
pub struct AcmeView {
    pub enabled: bool,
    /// Whether this appliance orders now (in a pair, only the master does).
    pub ordering: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory_url: Option<String>,
    pub orders: Orders,
    /// Names by state: pending, ordering, valid, failed.
    pub states: BTreeMap<&'static str, usize>,
    pub certificates: Vec<NameView>,
}

#[derive(Debug, Serialize)]
pub struct Orders {
    pub issued: u64,
    pub failed: u64,
    pub running: usize,
}

#[derive(Debug, Serialize)]
pub struct NameView {
    pub name: String,
    /// pending, ordering, valid, failed; `served` for a certificate held
    /// (from a peer) for a name this appliance does not manage.
    pub state: &'static str,
    /// The certificate served, seconds since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// When the next order is due, seconds since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<u64>,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

pub fn view(c: &Control) -> AcmeView {
    let managed: BTreeMap<String, _> = c
        .shared
        .managed
        .all()
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .collect();
    let mut names: BTreeMap<String, NameView> = BTreeMap::new();
    for (name, e) in c.acme.schedule.iter() {
        names.insert(
            name.to_owned(),
            NameView {
                name: name.to_owned(),
                state: e.state.as_str(),
                not_before: None,
                not_after: None,
                issuer: None,
                next_attempt: Some(e.next_ms / 1000),
                attempts: e.attempts,
                last_error: e.last_error.clone(),
            },
        );
    }
    for (name, stored) in &managed {
        let v = names.entry(name.clone()).or_insert_with(|| NameView {
            name: name.clone(),
            state: "served",
            not_before: None,
            not_after: None,
            issuer: None,
            next_attempt: None,
            attempts: 0,
            last_error: None,
        });
        v.not_before = Some(stored.not_before);
        v.not_after = Some(stored.not_after);
        v.issuer = stored.issuer().map(str::to_owned);
    }
    AcmeView {
        enabled: c.config.acme.is_some(),
        ordering: c.config.acme.is_some() && c.acme.idle_reason.is_none(),
        idle_reason: c.acme.idle_reason,
        directory_url: c.config.acme.as_ref().map(|a| a.directory_url.clone()),
        orders: Orders {
            issued: c.acme.issued,
            failed: c.acme.failed,
            running: c.acme.running,
        },
        states: c.acme.schedule.counts(),
        certificates: names.into_values().collect(),
    }
}

pub fn get(control: &Rc<RefCell<Control>>) -> Response<Body> {
    json_response(StatusCode::OK, &view(&control.borrow()))
}

/// An operator's renewal: the name is due now (the hourly budget still
/// holds); the answer is the name's state.
pub fn renew(control: &Rc<RefCell<Control>>, name: &str) -> Result<Response<Body>, ApiError> {
    let mut c = control.borrow_mut();
    if c.config.acme.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "this appliance has no acme section",
        ));
    }
    if !c.acme.schedule.force(name, crate::acme::run::wall_ms()) {
        return Err(ApiError::not_found(format!(
            "{name} is not a name this appliance obtains certificates for (acme.names, or a host of the host map)"
        )));
    }
    tracing::info!(name, "acme: renewal asked for through the admin API");
    let v = view(&c);
    let row = v.certificates.into_iter().find(|n| n.name == name);
    Ok(json_response(StatusCode::ACCEPTED, &row))
}
