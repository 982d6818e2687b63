//! The appliance's settings on the kernel command line.
//!
//! ```text
//! edgebox.net=IFACE,ADDRESS/PREFIX[,gw=GATEWAY]    one per interface, repeatable
//! edgebox.net=eth0,192.0.2.10/24,gw=192.0.2.1
//! edgebox.net=eth1,2001:db8::10/64
//! ```
//!
//! Parameters not starting with `edgebox.` belong to the kernel and are
//! ignored here; an unknown or malformed `edgebox.` parameter is an error that
//! names it, so a typo is reported on the console instead of leaving the
//! appliance silently unreachable.

use std::net::IpAddr;

/// A static address for one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub iface: String,
    pub address: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
}

/// Everything edgebox reads from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootParams {
    pub net: Vec<NetConfig>,
    /// The boot slot (`edgebox.slot=a|b`, written into each slot's boot
    /// entry; see [`crate::update::slots`]).
    pub slot: Option<crate::update::Slot>,
    /// How long a slot on trial has to become healthy
    /// (`edgebox.trial_deadline=SECONDS`, 10 to 3600).
    pub trial_deadline: Option<std::time::Duration>,
}

/// A parameter that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kernel command line: {param}: {reason}")]
pub struct CmdlineError {
    pub param: String,
    pub reason: String,
}

/// Splits a command line into parameters, honouring double quotes.
pub fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

pub fn parse(cmdline: &str) -> Result<BootParams, CmdlineError> {
    let mut params = BootParams::default();
    for word in words(cmdline) {
        let Some(rest) = word.strip_prefix("edgebox.") else {
            continue;
        };
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        let fail = |reason: &str| CmdlineError {
            param: word.clone(),
            reason: reason.to_owned(),
        };
        match key {
            "net" => {
                let net = parse_net(value).map_err(|r| fail(&r))?;
                if params.net.iter().any(|n| n.iface == net.iface) {
                    return Err(fail("this interface is configured twice"));
                }
                params.net.push(net);
            }
            "slot" => {
                params.slot =
                    Some(crate::update::Slot::parse(value).ok_or_else(|| fail("expected a or b"))?);
            }
            "trial_deadline" => {
                let secs: u64 = value
                    .parse()
                    .ok()
                    .filter(|s| (10..=3600).contains(s))
                    .ok_or_else(|| fail("expected seconds, 10 to 3600"))?;
                params.trial_deadline = Some(std::time::Duration::from_secs(secs));
            }
            _ => {
                return Err(fail(
                    "unknown edgebox parameter (known: edgebox.net, edgebox.slot, edgebox.trial_deadline)",
                ))
            }
        }
    }
    Ok(params)
}

/// `IFACE,ADDRESS/PREFIX[,gw=GATEWAY]`; the error says what is wrong.
pub fn parse_net(value: &str) -> Result<NetConfig, String> {
    const FORM: &str = "expected IFACE,ADDRESS/PREFIX[,gw=GATEWAY]";
    let mut parts = value.split(',');
    let iface = parts.next().unwrap_or("");
    let ok_name = !iface.is_empty()
        && iface.len() <= 15
        && iface
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok_name {
        return Err(format!("{iface:?} is not an interface name; {FORM}"));
    }
    let cidr = parts.next().ok_or_else(|| format!("no address; {FORM}"))?;
    let (addr, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} has no /PREFIX; {FORM}"))?;
    let address: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("prefix {prefix:?} must be from 0 to {max}"))?;
    let mut gateway = None;
    for extra in parts {
        let gw = extra
            .strip_prefix("gw=")
            .ok_or_else(|| format!("{extra:?}: {FORM}"))?;
        let g: IpAddr = gw
            .parse()
            .map_err(|_| format!("gateway {gw:?} is not an IP address"))?;
        if g.is_ipv4() != address.is_ipv4() {
            return Err("the gateway and the address are of different IP versions".into());
        }
        gateway = Some(g);
    }
    Ok(NetConfig {
        iface: iface.to_owned(),
        address,
        prefix,
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_from_a_real_looking_line() {
        let p = parse(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 quiet edgebox.net=eth0,192.0.2.10/24,gw=192.0.2.1 edgebox.net=eth1,2001:db8::10/64",
        )
        .unwrap();
        assert_eq!(
            p.net,
            [
                NetConfig {
                    iface: "eth0".into(),
                    address: "192.0.2.10".parse().unwrap(),
                    prefix: 24,
                    gateway: Some("192.0.2.1".parse().unwrap()),
                },
                NetConfig {
                    iface: "eth1".into(),
                    address: "2001:db8::10".parse().unwrap(),
                    prefix: 64,
                    gateway: None,
                }
            ]
        );
        assert_eq!(parse("console=ttyS0").unwrap(), BootParams::default());
    }

    #[test]
    fn mistakes_name_the_parameter() {
        for (line, needle) in [
            ("edgebox.net=eth0,192.0.2.300/24", "not an IP address"),
            ("edgebox.net=eth0,192.0.2.1", "no /PREFIX"),
            ("edgebox.net=eth0,192.0.2.1/33", "prefix"),
            (
                "edgebox.net=eth0,10.0.0.1/8,gw=2001:db8::1",
                "different IP versions",
            ),
            ("edgebox.net=eth0,10.0.0.1/8,via=10.0.0.2", "expected"),
            ("edgebox.net=,10.0.0.1/8", "interface name"),
            (
                "edgebox.net=eth0,10.0.0.1/8 edgebox.net=eth0,10.0.0.2/8",
                "twice",
            ),
            ("edgebox.nett=eth0,10.0.0.1/8", "unknown edgebox parameter"),
            ("edgebox.slot=c", "expected a or b"),
            ("edgebox.trial_deadline=5", "10 to 3600"),
            ("edgebox.trial_deadline=x", "10 to 3600"),
        ] {
            let e = parse(line).unwrap_err();
            assert!(e.to_string().contains(needle), "{line}: {e}");
            assert!(line.contains(&e.param), "{e:?}");
        }
    }

    #[test]
    fn quotes_group_words() {
        assert_eq!(words(" a \"b c\" d=\"e f\"  "), ["a", "b c", "d=e f"]);
        assert_eq!(words(""), Vec::<String>::new());
    }
}
