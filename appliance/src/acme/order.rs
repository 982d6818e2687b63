//! One certificate order, RFC 8555 end to end, as a sans-IO state machine:
//! the caller sends the [`Request`]s it is given, hands back each
//! [`Response`], waits when told, and provisions challenge answers when told;
//! the machine keeps the nonce, the URLs and the order's state. No clock and
//! no sockets: tests drive it with scripted answers.
//!
//! ```text
//! directory? ─ nonce? ─ account? ─ newOrder ─┬─ per authorization: fetch,
//!                                            │  provision, answer, poll
//!                                            └─ finalize (CSR) ─ poll ─ download
//! ```
//!
//! A `badNonce` error is retried with the nonce it carries (RFC 8555 6.5);
//! any other problem ends the order with the CA's words.
#![forbid(unsafe_code)]

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::jws::{b64, AccountKey};

/// How a challenge is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
pub enum ChallengeKind {
    /// The key authorization at `http://NAME/.well-known/acme-challenge/TOKEN`.
    #[serde(rename = "http-01")]
    Http01,
    /// A certificate for NAME carrying the key authorization's digest,
    /// shown to a client that offers ALPN `acme-tls/1` (RFC 8737).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// What the data plane must show the CA for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub kind: ChallengeKind,
    pub name: String,
    pub token: String,
    pub key_authorization: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub url: String,
    /// A flattened JWS (`application/jose+json`) for POSTs.
    pub body: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Default)]
pub struct Response {
    pub status: u16,
    pub location: Option<String>,
    pub nonce: Option<String>,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
    pub body: Vec<u8>,
}

/// What to do next.
#[derive(Debug)]
pub enum Step {
    Send(Request),
    /// Ask again after this long (the CA is still working).
    Wait(Duration),
    /// Make this challenge answerable, then ask again.
    Provision(Challenge),
    /// The order is done: the certificate chain (PEM, leaf first).
    Done(String),
    Failed(Problem),
}

/// Why an order failed, in the CA's words where it gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The ACME error type without its URN prefix (`rateLimited`,
    /// `unauthorized`, …), or `client` for what went wrong here.
    pub kind: String,
    pub detail: String,
    /// The CA asked not to be asked again before this many seconds.
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

impl Problem {
    /// Something that went wrong on this side, not the CA's.
    pub fn client(detail: impl Into<String>) -> Self {
        Self {
            kind: "client".into(),
            detail: detail.into(),
            retry_after: None,
        }
    }
}

/// The CA's directory (RFC 8555 7.1.1).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Directory {
    pub new_nonce: String,
    pub new_account: String,
    pub new_order: String,
    /// RFC 9773: where renewal windows are asked for, if the CA offers them.
    #[serde(default)]
    pub renewal_info: Option<String>,
    #[serde(default)]
    pub meta: Option<Value>,
}

/// What an order needs of the account, and learns for the next ones.
#[derive(Debug)]
pub struct Session {
    pub directory_url: String,
    pub directory: Option<Directory>,
    /// The account URL, once the CA has it.
    pub kid: Option<String>,
    pub contact: Vec<String>,
    /// External account binding: key id and MAC key.
    pub eab: Option<(String, Vec<u8>)>,
}

/// How many `badNonce` answers in a row are retried.
const NONCE_RETRIES: u32 = 5;
/// How long to wait between polls when the CA names no time.
const POLL: Duration = Duration::from_secs(1);
/// How many polls of one authorization or order before giving up.
const MAX_POLLS: u32 = 120;

#[derive(Debug, Clone)]
enum Phase {
    Directory,
    Account,
    NewOrder,
    /// Fetch authorization `i` for the first time.
    Authz(usize),
    /// Provision this challenge of authorization `i`, then answer it at the URL.
    Provision(usize, Challenge, String),
    /// Tell the CA that authorization `i`'s challenge is ready.
    Answer(usize, String),
    /// Ask again how authorization `i` is going.
    PollAuthz(usize),
    Finalize,
    PollOrder,
    Download(String),
    Over,
}

#[derive(Debug, Deserialize)]
struct OrderBody {
    status: String,
    #[serde(default)]
    authorizations: Vec<String>,
    finalize: String,
    #[serde(default)]
    certificate: Option<String>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct AuthzBody {
    status: String,
    #[serde(default)]
    challenges: Vec<ChallengeBody>,
}

#[derive(Debug, Deserialize)]
struct ChallengeBody {
    #[serde(rename = "type")]
    kind: String,
    url: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    error: Option<Value>,
}

/// One order for one DNS name.
#[derive(Debug)]
pub struct Order {
    name: String,
    /// Challenge types this appliance can answer, in order of preference.
    kinds: Vec<ChallengeKind>,
    /// The certificate request (DER), signed by the certificate's key.
    csr: Vec<u8>,
    phase: Phase,
    /// A `HEAD newNonce` is out (the request it is for is sent next).
    fetching_nonce: bool,
    nonce: Option<String>,
    bad_nonces: u32,
    /// The account was registered again once during this order.
    registered_again: bool,
    polls: u32,
    order_url: Option<String>,
    authorizations: Vec<String>,
    finalize: Option<String>,
    provisioned: Vec<Challenge>,
    wait: Option<Duration>,
    outcome: Option<Result<String, Problem>>,
}

impl Order {
    pub fn new(name: &str, kinds: &[ChallengeKind], csr: Vec<u8>) -> Self {
        Self {
            name: name.to_owned(),
            kinds: kinds.to_vec(),
            csr,
            phase: Phase::Directory,
            fetching_nonce: false,
            nonce: None,
            bad_nonces: 0,
            registered_again: false,
            polls: 0,
            order_url: None,
            authorizations: Vec::new(),
            finalize: None,
            provisioned: Vec::new(),
            wait: None,
            outcome: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The challenges provisioned so far (to be withdrawn when it ends).
    pub fn provisioned(&self) -> &[Challenge] {
        &self.provisioned
    }

    /// What to do now. After [`Step::Send`], call [`Order::receive`] with
    /// the answer before asking again.
    pub fn next(&mut self, session: &Session, key: &AccountKey) -> Step {
        if let Some(outcome) = &self.outcome {
            return match outcome {
                Ok(pem) => Step::Done(pem.clone()),
                Err(p) => Step::Failed(p.clone()),
            };
        }
        if let Some(wait) = self.wait.take() {
            return Step::Wait(wait);
        }
        // What the session knows already is not asked again.
        loop {
            match self.phase {
                Phase::Directory if session.directory.is_some() => self.phase = Phase::Account,
                Phase::Account if session.kid.is_some() => self.phase = Phase::NewOrder,
                _ => break,
            }
        }
        let (url, payload, as_account) = match &self.phase {
            Phase::Directory => {
                return Step::Send(Request {
                    method: Method::Get,
                    url: session.directory_url.clone(),
                    body: None,
                })
            }
            Phase::Over => return self.fail(Problem::client("the order is over")),
            Phase::Provision(i, challenge, url) => {
                let challenge = challenge.clone();
                self.phase = Phase::Answer(*i, url.clone());
                self.provisioned.push(challenge.clone());
                return Step::Provision(challenge);
            }
            Phase::Account => {
                let Some(dir) = &session.directory else {
                    return self.fail(Problem::client("no directory"));
                };
                let mut body = json!({ "termsOfServiceAgreed": true });
                if !session.contact.is_empty() {
                    body["contact"] = json!(session.contact);
                }
                if let Some((kid, mac)) = &session.eab {
                    body["externalAccountBinding"] = key.eab(kid, mac, &dir.new_account);
                }
                (dir.new_account.clone(), Some(body), false)
            }
            Phase::NewOrder => {
                let Some(dir) = &session.directory else {
                    return self.fail(Problem::client("no directory"));
                };
                let body = json!({ "identifiers": [{ "type": "dns", "value": self.name }] });
                (dir.new_order.clone(), Some(body), true)
            }
            Phase::Authz(i) | Phase::PollAuthz(i) => (self.authorizations[*i].clone(), None, true),
            Phase::Answer(_, url) => (url.clone(), Some(json!({})), true),
            Phase::Finalize => match &self.finalize {
                Some(url) => (url.clone(), Some(json!({ "csr": b64(&self.csr) })), true),
                None => return self.fail(Problem::client("the order has no finalize URL")),
            },
            Phase::PollOrder => match &self.order_url {
                Some(url) => (url.clone(), None, true),
                None => return self.fail(Problem::client("the CA gave no order URL")),
            },
            Phase::Download(url) => (url.clone(), None, true),
        };
        let Some(nonce) = self.nonce.take() else {
            let Some(dir) = &session.directory else {
                return self.fail(Problem::client("no directory"));
            };
            self.fetching_nonce = true;
            return Step::Send(Request {
                method: Method::Head,
                url: dir.new_nonce.clone(),
                body: None,
            });
        };
        let kid = match (as_account, &session.kid) {
            (false, _) => None,
            (true, Some(kid)) => Some(kid.as_str()),
            (true, None) => return self.fail(Problem::client("no account")),
        };
        match key.sign(&url, &nonce, kid, payload.as_ref()) {
            Ok(body) => Step::Send(Request {
                method: Method::Post,
                url,
                body: Some(body),
            }),
            Err(e) => self.fail(Problem::client(e)),
        }
    }

    /// The answer to the last [`Step::Send`].
    pub fn receive(&mut self, session: &mut Session, key: &AccountKey, r: Response) {
        if r.nonce.is_some() {
            self.nonce = r.nonce.clone();
        }
        if self.fetching_nonce {
            self.fetching_nonce = false;
            if self.nonce.is_none() {
                self.fail(Problem::client("the CA's newNonce gave no Replay-Nonce"));
            }
            return;
        }
        if r.status >= 400 {
            let problem = problem_of(&r);
            if problem.kind == "badNonce" && self.bad_nonces < NONCE_RETRIES {
                // Sent again, as it was, with the nonce this answer carried.
                self.bad_nonces += 1;
                return;
            }
            if problem.kind == "accountDoesNotExist"
                && matches!(self.phase, Phase::NewOrder)
                && !self.registered_again
            {
                // The CA forgot the account (a test CA restarted, an
                // account deactivated elsewhere): register the key again,
                // once, and go on.
                self.registered_again = true;
                session.kid = None;
                self.phase = Phase::Account;
                return;
            }
            self.fail(problem);
            return;
        }
        self.bad_nonces = 0;
        if let Err(p) = self.advance(session, key, &r) {
            self.fail(p);
        }
    }

    fn advance(
        &mut self,
        session: &mut Session,
        key: &AccountKey,
        r: &Response,
    ) -> Result<(), Problem> {
        match self.phase.clone() {
            Phase::Directory => {
                session.directory = Some(parse::<Directory>(&r.body, "directory")?);
                self.phase = Phase::Account;
            }
            Phase::Account => {
                let kid = r
                    .location
                    .clone()
                    .ok_or_else(|| Problem::client("the CA's newAccount answer has no Location"))?;
                session.kid = Some(kid);
                self.phase = Phase::NewOrder;
            }
            Phase::NewOrder => {
                self.order_url = r.location.clone();
                let order = parse::<OrderBody>(&r.body, "order")?;
                self.authorizations = order.authorizations.clone();
                self.finalize = Some(order.finalize.clone());
                self.after_order(&order, r)?;
            }
            Phase::Authz(i) | Phase::PollAuthz(i) => {
                let authz = parse::<AuthzBody>(&r.body, "authorization")?;
                match authz.status.as_str() {
                    "valid" => {
                        self.polls = 0;
                        self.phase = if i + 1 < self.authorizations.len() {
                            Phase::Authz(i + 1)
                        } else {
                            Phase::Finalize
                        };
                    }
                    "pending" if matches!(self.phase, Phase::Authz(_)) => {
                        let (challenge, url) = self.choose(&authz, key)?;
                        self.phase = Phase::Provision(i, challenge, url);
                    }
                    "pending" | "processing" => self.poll_again(r)?,
                    _ => {
                        let why = authz
                            .challenges
                            .iter()
                            .find_map(|c| c.error.as_ref())
                            .map(problem_of_json)
                            .unwrap_or_else(|| Problem {
                                kind: "unauthorized".into(),
                                detail: format!(
                                    "the authorization for {} is {}",
                                    self.name, authz.status
                                ),
                                retry_after: None,
                            });
                        return Err(why);
                    }
                }
            }
            Phase::Answer(i, _) => {
                self.phase = Phase::PollAuthz(i);
                self.poll_again(r)?;
            }
            Phase::Finalize | Phase::PollOrder => {
                let order = parse::<OrderBody>(&r.body, "order")?;
                self.after_order(&order, r)?;
            }
            Phase::Download(_) => {
                let pem = String::from_utf8(r.body.clone())
                    .map_err(|_| Problem::client("the certificate is not text"))?;
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(Problem::client("the CA's answer holds no PEM certificate"));
                }
                self.phase = Phase::Over;
                self.outcome = Some(Ok(pem));
            }
            Phase::Provision(..) | Phase::Over => {}
        }
        Ok(())
    }

    /// Where an order's status leads.
    fn after_order(&mut self, order: &OrderBody, r: &Response) -> Result<(), Problem> {
        match order.status.as_str() {
            "pending" => {
                if self.authorizations.is_empty() {
                    return Err(Problem::client("a pending order with no authorizations"));
                }
                self.phase = Phase::Authz(0);
            }
            "ready" => self.phase = Phase::Finalize,
            "processing" => {
                self.phase = Phase::PollOrder;
                self.poll_again(r)?;
            }
            "valid" => {
                let url = order
                    .certificate
                    .clone()
                    .ok_or_else(|| Problem::client("a valid order with no certificate URL"))?;
                self.phase = Phase::Download(url);
            }
            other => {
                return Err(order
                    .error
                    .as_ref()
                    .map(problem_of_json)
                    .unwrap_or_else(|| Problem {
                        kind: "orderNotReady".into(),
                        detail: format!("the order for {} is {other}", self.name),
                        retry_after: None,
                    }))
            }
        }
        Ok(())
    }

    /// Picks the first challenge this appliance prefers and the CA offers.
    fn choose(&self, authz: &AuthzBody, key: &AccountKey) -> Result<(Challenge, String), Problem> {
        for kind in &self.kinds {
            if let Some(c) = authz.challenges.iter().find(|c| c.kind == kind.as_str()) {
                let token = c
                    .token
                    .clone()
                    .filter(|t| {
                        !t.is_empty()
                            && t.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    })
                    .ok_or_else(|| {
                        Problem::client(format!(
                            "the {} challenge has no usable token",
                            kind.as_str()
                        ))
                    })?;
                let challenge = Challenge {
                    kind: *kind,
                    name: self.name.clone(),
                    key_authorization: key.key_authorization(&token),
                    token,
                };
                return Ok((challenge, c.url.clone()));
            }
        }
        let offered: Vec<&str> = authz.challenges.iter().map(|c| c.kind.as_str()).collect();
        Err(Problem::client(format!(
            "the CA offers {offered:?} for {}, none of which is enabled here",
            self.name
        )))
    }

    fn poll_again(&mut self, r: &Response) -> Result<(), Problem> {
        self.polls += 1;
        if self.polls > MAX_POLLS {
            return Err(Problem::client(format!(
                "the CA did not finish the order for {} after {MAX_POLLS} polls",
                self.name
            )));
        }
        self.wait = Some(
            r.retry_after
                .map_or(POLL, |s| Duration::from_secs(s.clamp(1, 60))),
        );
        Ok(())
    }

    fn fail(&mut self, p: Problem) -> Step {
        self.phase = Phase::Over;
        self.wait = None;
        self.outcome = Some(Err(p.clone()));
        Step::Failed(p)
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Problem> {
    serde_json::from_slice(body)
        .map_err(|e| Problem::client(format!("the CA's {what} is not what RFC 8555 says: {e}")))
}

fn problem_of_json(v: &Value) -> Problem {
    let kind = v["type"].as_str().unwrap_or("serverInternal");
    Problem {
        kind: kind
            .strip_prefix("urn:ietf:params:acme:error:")
            .unwrap_or(kind)
            .to_owned(),
        detail: v["detail"].as_str().unwrap_or("(no detail)").to_owned(),
        retry_after: None,
    }
}

/// An error answer as a problem document (RFC 7807), or as its status.
fn problem_of(r: &Response) -> Problem {
    let mut p = match serde_json::from_slice::<Value>(&r.body) {
        Ok(v) if v.get("type").is_some() => problem_of_json(&v),
        _ => Problem {
            kind: "serverInternal".into(),
            detail: format!(
                "HTTP {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
            ),
            retry_after: None,
        },
    };
    p.retry_after = r.retry_after;
    p
}

#[cfg(test)]
#[path = "order_tests.rs"]
mod tests;
