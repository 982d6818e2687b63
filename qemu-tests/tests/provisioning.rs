//! An image built without an address: on the LAN it takes one by DHCP and
//! one by IPv6 router advertisement, says so on the console, and renews its
//! lease, as it would plugged into a network it was never told about. And
//! the image for dedicated hardware (`--kernel generic`) booted with
//! emulated physical devices only: an NVMe disk and an Intel e1000e NIC.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use edgebox_image::boot::Devices;
use edgebox_image::kernel::KernelSource;
use qemu_tests::{image_without_address, run, Appliance, Boot, Dnsmasq};

/// The address dnsmasq hands out (its only one).
const LEASED: [u8; 4] = [10, 0, 2, 50];
const RANGE: &str = "10.0.2.50,10.0.2.50";

/// The IPv6 address the console reports from router advertisements.
fn slaac_address(vm: &mut Appliance) -> String {
    vm.wait_console("by IPv6 router advertisement", Duration::from_secs(60))
        .unwrap();
    let console = vm.console();
    let line = console
        .lines()
        .find(|l| l.contains("by IPv6 router advertisement"))
        .unwrap();
    line.split_whitespace()
        .skip_while(|w| *w != "is")
        .nth(1)
        .unwrap()
        .to_owned()
}

fn curl_ok(url: &str) -> bool {
    Command::new("curl")
        .args([
            "-ks",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ])
        .output()
        .is_ok_and(|o| o.stdout == b"200")
}

#[test]
fn without_an_address_it_takes_one_by_dhcp_and_slaac_and_renews_the_lease() {
    let image = image_without_address(KernelSource::Cloud, "dhcp");
    run("dhcp", move |h| {
        let dnsmasq = Dnsmasq::start(h, RANGE, &[]);
        let disk = h.disk_of(&image, "vm");
        let mut vm = Appliance::boot_at(h, "vm", &disk, Boot::Uefi, LEASED.into());
        vm.wait_console(
            "network: eth0 is 10.0.2.50/24 by DHCP from 10.0.2.2 (lease 120 s), default route via 10.0.2.2",
            Duration::from_secs(120),
        )
        .unwrap();
        vm.wait_ready();
        let v6 = slaac_address(&mut vm);
        assert!(v6.starts_with("fd00:2:"), "{v6}");
        // The default listeners are IPv4 (0.0.0.0); the address answers
        // all the same: the kernel refuses the connection at once.
        let v6_addr: std::net::Ipv6Addr = v6.parse().unwrap();
        let refused =
            std::net::TcpStream::connect_timeout(&(v6_addr, 443).into(), Duration::from_secs(5))
                .map(|_| ())
                .unwrap_err();
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{v6}: {refused}"
        );
        // The lease is renewed at T1 (60 s): a second DHCPACK for the same
        // address, and the appliance still answers on it.
        let until = Instant::now() + Duration::from_secs(150);
        while dnsmasq.log().matches("DHCPACK(br0) 10.0.2.50").count() < 2 {
            assert!(Instant::now() < until, "no renewal:\n{}", dnsmasq.log());
            std::thread::sleep(Duration::from_secs(1));
        }
        assert!(dnsmasq.log().contains("DHCPREQUEST(br0) 10.0.2.50"));
        assert!(curl_ok("https://10.0.2.50/"));
        assert!(
            !vm.console().contains("lease of 10.0.2.50 ended"),
            "{}",
            vm.console()
        );
    });
}

#[test]
fn the_hardware_image_boots_from_nvme_with_an_e1000e_nic_and_serves_https() {
    let image = image_without_address(KernelSource::Generic, "generic");
    run("hardware", move |h| {
        let _dnsmasq = Dnsmasq::start(h, RANGE, &[]);
        let disk = h.disk_of(&image, "lb");
        let started = Instant::now();
        let mut vm = Appliance::boot_with(
            h,
            "lb",
            &disk,
            Boot::Uefi,
            LEASED.into(),
            512,
            Devices::Hardware,
        );
        vm.wait_ready();
        eprintln!(
            "generic kernel, NVMe + e1000e: first HTTPS response after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let console = vm.console();
        let modules = console
            .lines()
            .find(|l| l.contains("loaded modules:"))
            .unwrap_or_default();
        assert!(modules.contains(" e1000e"), "{modules}");
        assert!(!modules.contains("virtio"), "a virtio driver: {modules}");
        for needed in [
            "data partition /dev/nvme0n1p2 mounted on /data",
            "network: eth0 is 10.0.2.50/24 by DHCP",
            "boot slot a: edgebox image",
        ] {
            assert!(console.contains(needed), "{needed}:\n{console}");
        }
        let (status, v) = vm.api("GET", "/v1/update", None);
        assert_eq!(status, 200);
        assert_eq!(v["running"], "a", "{v}");
    });
}
