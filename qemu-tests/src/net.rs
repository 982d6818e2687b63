//! A test's private network: a network namespace of its own with a bridge
//! (the appliance's LAN: 10.0.2.0/24, gateway 10.0.2.2, like QEMU's user
//! network the test image is built for), tap devices for VMs, and addresses
//! for backends. The test's thread moves into the namespace, so everything
//! it starts (QEMU, backends, clients) and every socket it opens is there.
//! Nothing is bridged to the machine's real interfaces. Dropping it deletes
//! the namespace.

use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};
use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

const PREFIX: &str = "edgebox-qt-";

#[derive(Debug)]
pub struct TestNet {
    name: String,
    next_host: u8,
    next_tap: u32,
}

/// Runs `ip` with these arguments (in the calling thread's namespace).
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl TestNet {
    /// Makes the namespace and its bridge, and moves the calling thread
    /// into it. Call it from the thread that runs the test's body.
    pub fn enter() -> Result<TestNet> {
        remove_stale();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let net = TestNet {
            name,
            next_host: 100,
            next_tap: 0,
        };
        let fd = std::fs::File::open(format!("/run/netns/{}", net.name))?;
        move_into_link_name_space(fd.as_fd(), Some(LinkNameSpaceType::Network))
            .context("entering the test's network namespace")?;
        ip(&["link", "set", "lo", "up"])?;
        ip(&["link", "add", "br0", "type", "bridge"])?;
        ip(&["addr", "add", "10.0.2.2/24", "dev", "br0"])?;
        ip(&["link", "set", "br0", "up"])?;
        Ok(net)
    }

    /// The namespace's name (`ip netns exec NAME …`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new address on the bridge, for a backend or a client.
    pub fn host(&mut self) -> Result<std::net::Ipv4Addr> {
        let n = self.next_host;
        if n == 250 {
            bail!("no addresses left in 10.0.2.100-249");
        }
        self.next_host += 1;
        ip(&["addr", "add", &format!("10.0.2.{n}/24"), "dev", "br0"])?;
        Ok([10, 0, 2, n].into())
    }

    /// A new tap device on the bridge, for a VM; its name and a MAC address.
    pub fn tap(&mut self) -> Result<(String, String)> {
        let n = self.next_tap;
        self.next_tap += 1;
        let tap = format!("tap{n}");
        ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
        ip(&["link", "set", &tap, "master", "br0"])?;
        ip(&["link", "set", &tap, "up"])?;
        Ok((tap, format!("52:54:00:12:34:{:02x}", 0x56 + n)))
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Namespaces of test processes that no longer exist (killed before they
/// could clean up).
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}
