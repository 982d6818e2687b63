//! The order machine against a scripted CA: every request's signature is
//! checked, nonces are single-use, and the CA validates a challenge only if
//! what was provisioned is the right key authorization.

use std::collections::{HashMap, HashSet};

use super::*;

const DIR: &str = "https://ca.test/dir";

#[derive(Default)]
struct FakeCa {
    next_nonce: u64,
    live_nonces: HashSet<String>,
    /// Reject this many good nonces with badNonce.
    bad_nonces: u32,
    /// Account URLs the CA no longer knows.
    forgotten: Vec<String>,
    accounts: u32,
    orders: u32,
    /// Which challenge types the authorization offers.
    offers: Vec<&'static str>,
    /// Polls of a validating authorization that still answer "processing".
    slow_polls: u32,
    /// The validation fails (the CA could not reach the name).
    unreachable: bool,
    /// What was provisioned, by token.
    provisioned: HashMap<String, Challenge>,
    answered: bool,
    finalized: bool,
    /// Polls of a finalized order that still answer "processing".
    processing_polls: u32,
    thumbprint: String,
    log: Vec<String>,
}

impl FakeCa {
    fn new(thumbprint: String) -> Self {
        Self {
            offers: vec!["http-01", "tls-alpn-01", "dns-01"],
            thumbprint,
            ..Default::default()
        }
    }

    fn nonce(&mut self) -> String {
        self.next_nonce += 1;
        let n = format!("nonce-{}", self.next_nonce);
        self.live_nonces.insert(n.clone());
        n
    }

    fn answer(&mut self, status: u16, body: Value) -> Response {
        Response {
            status,
            nonce: Some(self.nonce()),
            body: body.to_string().into_bytes(),
            ..Default::default()
        }
    }

    fn problem(&mut self, status: u16, kind: &str, detail: &str) -> Response {
        self.answer(
            status,
            json!({"type": format!("urn:ietf:params:acme:error:{kind}"), "detail": detail}),
        )
    }

    fn authz(&self) -> Value {
        let status = if !self.answered {
            "pending"
        } else if self.unreachable {
            "invalid"
        } else if self.slow_polls > 0 {
            "pending"
        } else {
            "valid"
        };
        let challenges: Vec<Value> = self
            .offers
            .iter()
            .map(|t| {
                let mut c = json!({"type": t, "url": format!("https://ca.test/chall/{t}"), "token": format!("tok-{t}"), "status": "pending"});
                if self.unreachable && self.answered && *t == "http-01" {
                    c["error"] = json!({"type": "urn:ietf:params:acme:error:connection", "detail": "could not connect to shop.test"});
                }
                c
            })
            .collect();
        json!({"status": status, "identifier": {"type": "dns", "value": "shop.test"}, "challenges": challenges})
    }

    fn order(&self) -> Value {
        let status = if self.finalized {
            if self.processing_polls > 0 {
                "processing"
            } else {
                "valid"
            }
        } else if self.answered && !self.unreachable && self.slow_polls == 0 {
            "ready"
        } else {
            "pending"
        };
        json!({
            "status": status,
            "identifiers": [{"type": "dns", "value": "shop.test"}],
            "authorizations": ["https://ca.test/authz/1"],
            "finalize": "https://ca.test/finalize/1",
            "certificate": "https://ca.test/cert/1",
        })
    }

    fn handle(&mut self, key: &AccountKey, req: &Request) -> Response {
        self.log.push(req.url.clone());
        match (req.method, req.url.as_str()) {
            (Method::Get, DIR) => {
                return Response {
                    status: 200,
                    body: json!({"newNonce": "https://ca.test/nonce", "newAccount": "https://ca.test/acct", "newOrder": "https://ca.test/order"}).to_string().into_bytes(),
                    ..Default::default()
                }
            }
            (Method::Head, "https://ca.test/nonce") => {
                return Response {
                    status: 200,
                    nonce: Some(self.nonce()),
                    ..Default::default()
                }
            }
            (Method::Post, _) => {}
            (m, url) => panic!("unexpected {m:?} {url}"),
        }
        let (header, payload) = super::super::jws::tests::verify(key, req.body.as_ref().unwrap());
        assert_eq!(
            header["url"], req.url,
            "the JWS names the URL it is sent to"
        );
        let nonce = header["nonce"].as_str().unwrap().to_owned();
        assert!(
            self.live_nonces.remove(&nonce),
            "nonce {nonce} used twice or made up"
        );
        if self.bad_nonces > 0 {
            self.bad_nonces -= 1;
            return self.problem(400, "badNonce", "JWS has an invalid anti-replay nonce");
        }
        let by_kid = header.get("kid").is_some();
        match req.url.as_str() {
            "https://ca.test/acct" => {
                assert!(
                    !by_kid && header.get("jwk").is_some(),
                    "newAccount carries the JWK"
                );
                assert_eq!(payload.unwrap()["termsOfServiceAgreed"], true);
                self.accounts += 1;
                let mut r = self.answer(201, json!({"status": "valid"}));
                r.location = Some("https://ca.test/acct/1".into());
                r
            }
            url => {
                let kid = header["kid"].as_str().unwrap_or_default().to_owned();
                if self.forgotten.contains(&kid) {
                    return self.problem(400, "accountDoesNotExist", "no such account");
                }
                assert_eq!(
                    kid, "https://ca.test/acct/1",
                    "{url} is signed by the account"
                );
                match url {
                    "https://ca.test/order" => {
                        assert_eq!(
                            payload.unwrap()["identifiers"],
                            json!([{"type": "dns", "value": "shop.test"}])
                        );
                        self.orders += 1;
                        let body = self.order();
                        let mut r = self.answer(201, body);
                        r.location = Some("https://ca.test/order/1".into());
                        r
                    }
                    "https://ca.test/authz/1" => {
                        assert_eq!(payload, None, "POST-as-GET");
                        if self.answered && self.slow_polls > 0 {
                            self.slow_polls -= 1;
                        }
                        let body = self.authz();
                        let mut r = self.answer(200, body);
                        r.retry_after = Some(2);
                        r
                    }
                    u if u.starts_with("https://ca.test/chall/") => {
                        assert_eq!(payload, Some(json!({})));
                        let kind = u.rsplit('/').next().unwrap();
                        let token = format!("tok-{kind}");
                        let p = self
                            .provisioned
                            .get(&token)
                            .expect("answered before provisioning");
                        assert_eq!(p.key_authorization, format!("{token}.{}", self.thumbprint));
                        self.answered = true;
                        let body =
                            json!({"type": kind, "status": "processing", "url": u, "token": token});
                        self.answer(200, body)
                    }
                    "https://ca.test/finalize/1" => {
                        assert!(!payload.unwrap()["csr"].as_str().unwrap().is_empty());
                        self.finalized = true;
                        let body = self.order();
                        self.answer(200, body)
                    }
                    "https://ca.test/order/1" => {
                        assert_eq!(payload, None);
                        self.processing_polls = self.processing_polls.saturating_sub(1);
                        let body = self.order();
                        self.answer(200, body)
                    }
                    "https://ca.test/cert/1" => {
                        let mut r = self.answer(200, json!(null));
                        r.body = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
                            .to_vec();
                        r
                    }
                    other => panic!("unexpected POST to {other}"),
                }
            }
        }
    }
}

struct Run {
    outcome: Result<String, Problem>,
    waited: Duration,
    provisioned: Vec<Challenge>,
}

fn session() -> Session {
    Session {
        directory_url: DIR.into(),
        directory: None,
        kid: None,
        contact: vec!["mailto:ops@shop.test".into()],
        eab: None,
    }
}

fn drive(ca: &mut FakeCa, session: &mut Session, key: &AccountKey, kinds: &[ChallengeKind]) -> Run {
    let mut order = Order::new("shop.test", kinds, vec![0x30, 0x00]);
    let mut waited = Duration::ZERO;
    for _ in 0..1000 {
        match order.next(session, key) {
            Step::Send(req) => {
                let r = ca.handle(key, &req);
                order.receive(session, key, r);
            }
            Step::Wait(d) => waited += d,
            Step::Provision(c) => {
                ca.provisioned.insert(c.token.clone(), c);
            }
            Step::Done(pem) => {
                return Run {
                    outcome: Ok(pem),
                    waited,
                    provisioned: order.provisioned().to_vec(),
                }
            }
            Step::Failed(p) => {
                return Run {
                    outcome: Err(p),
                    waited,
                    provisioned: order.provisioned().to_vec(),
                }
            }
        }
    }
    panic!("the order did not end in 1000 steps");
}

#[test]
fn an_order_runs_from_the_directory_to_the_certificate() {
    let key = AccountKey::generate().unwrap();
    let mut ca = FakeCa::new(key.thumbprint());
    ca.slow_polls = 2;
    ca.processing_polls = 1;
    let mut s = session();
    let run = drive(
        &mut ca,
        &mut s,
        &key,
        &[ChallengeKind::Http01, ChallengeKind::TlsAlpn01],
    );
    assert!(run
        .outcome
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(run.provisioned.len(), 1);
    assert_eq!(run.provisioned[0].kind, ChallengeKind::Http01);
    assert_eq!(run.provisioned[0].name, "shop.test");
    // Two slow authorization polls honour Retry-After (2 s each), the
    // processing order is polled once more after the default second.
    assert!(
        run.waited >= Duration::from_secs(4),
        "waited {:?}",
        run.waited
    );
    assert_eq!(s.kid.as_deref(), Some("https://ca.test/acct/1"));
    assert!(s.directory.is_some());

    // The next order reuses the directory and the account.
    let mut ca2 = FakeCa::new(key.thumbprint());
    ca2.next_nonce = 100;
    let run = drive(&mut ca2, &mut s, &key, &[ChallengeKind::TlsAlpn01]);
    assert!(run.outcome.is_ok());
    assert_eq!(run.provisioned[0].kind, ChallengeKind::TlsAlpn01);
    assert_eq!(ca2.accounts, 0, "no second newAccount");
    assert!(
        !ca2.log.iter().any(|u| u == DIR),
        "no second directory fetch"
    );
}

#[test]
fn bad_nonces_are_retried_with_the_nonce_they_carry() {
    let key = AccountKey::generate().unwrap();
    let mut ca = FakeCa::new(key.thumbprint());
    ca.bad_nonces = 3;
    let mut s = session();
    let run = drive(&mut ca, &mut s, &key, &[ChallengeKind::Http01]);
    assert!(run.outcome.is_ok(), "{:?}", run.outcome);
    assert_eq!(ca.accounts, 1);
    assert_eq!(ca.orders, 1);

    // Past the retry budget the order fails and says why.
    let mut ca = FakeCa::new(key.thumbprint());
    ca.bad_nonces = 100;
    let run = drive(&mut ca, &mut session(), &key, &[ChallengeKind::Http01]);
    let p = run.outcome.unwrap_err();
    assert_eq!(p.kind, "badNonce");
}

#[test]
fn a_failed_validation_ends_the_order_with_the_cas_reason() {
    let key = AccountKey::generate().unwrap();
    let mut ca = FakeCa::new(key.thumbprint());
    ca.unreachable = true;
    let run = drive(&mut ca, &mut session(), &key, &[ChallengeKind::Http01]);
    let p = run.outcome.unwrap_err();
    assert_eq!(p.kind, "connection");
    assert_eq!(p.detail, "could not connect to shop.test");
    assert_eq!(
        run.provisioned.len(),
        1,
        "withdrawn by the caller from this list"
    );
}

#[test]
fn a_ca_offering_no_enabled_challenge_is_refused_before_anything_is_provisioned() {
    let key = AccountKey::generate().unwrap();
    let mut ca = FakeCa::new(key.thumbprint());
    ca.offers = vec!["dns-01"];
    let run = drive(
        &mut ca,
        &mut session(),
        &key,
        &[ChallengeKind::Http01, ChallengeKind::TlsAlpn01],
    );
    let p = run.outcome.unwrap_err();
    assert!(p.detail.contains("dns-01"), "{p}");
    assert!(run.provisioned.is_empty());
}

#[test]
fn rate_limits_and_malformed_answers_fail_with_what_the_ca_said() {
    let key = AccountKey::generate().unwrap();
    let mut s = session();
    let mut order = Order::new("shop.test", &[ChallengeKind::Http01], vec![]);
    s.directory = Some(Directory {
        new_nonce: "n".into(),
        new_account: "a".into(),
        new_order: "o".into(),
        renewal_info: None,
        meta: None,
    });
    s.kid = Some("k".into());
    // No nonce yet: one is fetched first.
    let Step::Send(r) = order.next(&s, &key) else {
        panic!()
    };
    assert_eq!((r.method, r.url.as_str()), (Method::Head, "n"));
    order.receive(
        &mut s,
        &key,
        Response {
            status: 200,
            nonce: Some("x".into()),
            ..Default::default()
        },
    );
    let Step::Send(r) = order.next(&s, &key) else {
        panic!()
    };
    assert_eq!((r.method, r.url.as_str()), (Method::Post, "o"));
    order.receive(
        &mut s,
        &key,
        Response {
            status: 429,
            retry_after: Some(3600),
            body: br#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many certificates"}"#.to_vec(),
            ..Default::default()
        },
    );
    let Step::Failed(p) = order.next(&s, &key) else {
        panic!()
    };
    assert_eq!(
        p,
        Problem {
            kind: "rateLimited".into(),
            detail: "too many certificates".into(),
            retry_after: Some(3600)
        }
    );

    // A directory that is not JSON.
    let mut s = session();
    let mut order = Order::new("shop.test", &[ChallengeKind::Http01], vec![]);
    let Step::Send(_) = order.next(&s, &key) else {
        panic!()
    };
    order.receive(
        &mut s,
        &key,
        Response {
            status: 200,
            body: b"<html>".to_vec(),
            ..Default::default()
        },
    );
    let Step::Failed(p) = order.next(&s, &key) else {
        panic!()
    };
    assert_eq!(p.kind, "client");
    assert!(p.detail.contains("directory"), "{p}");
}

#[test]
fn an_account_the_ca_forgot_is_registered_again_once() {
    let key = AccountKey::generate().unwrap();
    let mut ca = FakeCa::new(key.thumbprint());
    ca.forgotten = vec!["https://ca.test/acct/old".into()];
    let mut s = session();
    s.kid = Some("https://ca.test/acct/old".into());
    let run = drive(&mut ca, &mut s, &key, &[ChallengeKind::Http01]);
    assert!(run.outcome.is_ok(), "{:?}", run.outcome);
    assert_eq!(ca.accounts, 1, "registered again");
    assert_eq!(s.kid.as_deref(), Some("https://ca.test/acct/1"));

    // A CA that forgets the new account too: the order fails, no loop.
    let mut ca = FakeCa::new(key.thumbprint());
    ca.forgotten = vec![
        "https://ca.test/acct/old".into(),
        "https://ca.test/acct/1".into(),
    ];
    let mut s = session();
    s.kid = Some("https://ca.test/acct/old".into());
    let run = drive(&mut ca, &mut s, &key, &[ChallengeKind::Http01]);
    assert_eq!(run.outcome.unwrap_err().kind, "accountDoesNotExist");
    assert_eq!(ca.accounts, 1);
}
