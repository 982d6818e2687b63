//! Applying an item from a peer, once its blobs are all here, through the
//! control plane's one path for changes: checked, made durable, published.
//! Only then does it join the catalog; an item that cannot be applied here
//! (the disk is full, the config does not validate on this appliance)
//! leaves everything as it was, and is tried again later.

use std::cell::RefCell;
use std::rc::Rc;

use edgebox_storage::replication::{Item, Value};

use super::shared::{self, SharedConfig, SITE_PREFIX};
use crate::control::{ApplyError, Control};

/// How long an item that failed to apply waits before it is tried again.
const RETRY_MS: u64 = 30_000;

pub async fn apply(control: &Rc<RefCell<Control>>, item: Item) {
    let kind = super::replica::kind_of(&item.key).unwrap_or("other");
    let result = match kind {
        "site" => control.borrow_mut().apply_site(&item),
        "config" => apply_config(control, &item).await,
        "hostmap" => apply_shard(control, &item),
        "tickets" => apply_tickets(control, &item),
        "certs" => match crate::acme::shard::of_key(&item.key) {
            Some(shard) => control.borrow_mut().apply_cert_shard(shard, &item.value),
            None => Err("not a certificate shard".into()),
        },
        // Kept in the catalog, read from there when this appliance orders.
        "acme-account" => Ok(()),
        _ => Err("not an item this appliance knows".to_owned()),
    };
    let mut c = control.borrow_mut();
    match result {
        Ok(()) => {
            tracing::info!(
                key = item.key,
                generation = item.version.lamport,
                "replication: applied a peer's change"
            );
            c.replica.applied(item);
        }
        Err(e) => {
            tracing::warn!(
                key = item.key,
                generation = item.version.lamport,
                "replication: could not apply a peer's change, keeping this appliance's: {e}"
            );
            c.replica.apply_failed(&item, RETRY_MS);
        }
    }
}

impl Control {
    /// A peer's publish or deletion of a site, at its generation.
    pub fn apply_site(&mut self, item: &Item) -> Result<(), String> {
        let name = item.key.strip_prefix(SITE_PREFIX).unwrap_or_default();
        let generation = item.version.lamport;
        match &item.value {
            Value::Site { manifest } => self
                .content
                .publish_at(name, *manifest, generation)
                .map(|_| ()),
            Value::Deleted => self.content.delete_at(name, generation),
            _ => return Err("not a site".into()),
        }
        .map_err(|e| e.to_string())?;
        self.refresh_site(name).map_err(|e| e.to_string())
    }
}

async fn apply_config(control: &Rc<RefCell<Control>>, item: &Item) -> Result<(), String> {
    let Value::Doc { text } = &item.value else {
        return Err("not a config".into());
    };
    let shared = SharedConfig::from_doc(text)?;
    let (new, unresolved, gens) = {
        let c = control.borrow();
        let new = shared::merge(&c.config, shared, &c.data).map_err(|e| e.to_string())?;
        new.validate().map_err(|e| e.to_string())?;
        let unresolved = crate::discovery::unresolved(&new, &c.upstreams);
        (new, unresolved, c.gens)
    };
    let mut resolved = crate::discovery::Resolved::new();
    if !unresolved.is_empty() {
        let resolver = control.borrow_mut().resolver(&new.dns)?;
        resolved = crate::discovery::resolve_all(&resolver, unresolved)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut c = control.borrow_mut();
    if c.gens != gens {
        return Err("the config changed here meanwhile; tried again later".into());
    }
    let prepared = c
        .prepare_config(new, resolved)
        .map_err(|e: ApplyError| e.to_string())?;
    c.commit_replicated(prepared).map_err(|e| e.to_string())?;
    crate::tls::prune_uploaded(&c.data.clone(), &c.config);
    Ok(())
}

fn apply_shard(control: &Rc<RefCell<Control>>, item: &Item) -> Result<(), String> {
    let shard = shared::shard_of_key(&item.key).ok_or("not a host-map shard")?;
    let mut c = control.borrow_mut();
    let new = match &item.value {
        Value::Blob { hash } => {
            let bytes = c
                .content
                .blobs()
                .read_verified(hash)
                .map_err(|e| e.to_string())?;
            shared::parse_shard(shard, &bytes)?
        }
        Value::Deleted => Vec::new(),
        _ => return Err("not a host-map shard".into()),
    };
    let old = c.replica.shard_entries(shard, &c.content, &c.hostmap)?;
    let changes = shared::shard_changes(&c.hostmap, &old, &new);
    if changes.is_empty() {
        return Ok(());
    }
    let prepared = c
        .prepare_hostmap_changes(changes)
        .map_err(|e| e.to_string())?;
    c.commit_replicated(prepared).map_err(|e| e.to_string())
}

fn apply_tickets(control: &Rc<RefCell<Control>>, item: &Item) -> Result<(), String> {
    let Value::Secret { hex } = &item.value else {
        return Err("not a ticket secret".into());
    };
    let secret = super::replica::parse_secret(hex).ok_or("not a ticket secret")?;
    let c = control.borrow();
    c.shared
        .tickets
        .set_secret(secret)
        .map_err(|e| e.to_string())
}
