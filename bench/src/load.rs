//! The load generators from Debian's packages, wrk (HTTP/1.1) and h2load
//! (HTTP/2), run on the load core, and what they print, parsed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::procfs;

/// What one load run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadResult {
    pub requests: u64,
    pub seconds: f64,
    /// Response bytes per second (headers and bodies).
    pub bytes_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU seconds the load generator used.
    pub cpu_s: f64,
}

impl LoadResult {
    pub fn requests_per_s(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// Runs `cmd`, returns its stdout and the CPU it used. It inherits this
/// process's pinning to the load core.
fn run(mut cmd: Command) -> Result<(String, f64)> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let before = procfs::own_cpu_seconds();
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    let cpu = procfs::own_cpu_seconds() - before;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{program} failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((stdout, cpu))
}

/// wrk: one thread, `connections` keep-alive connections, for `duration`.
pub fn wrk(url: &str, connections: u32, duration: Duration) -> Result<LoadResult> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "--latency", "--timeout", "10s"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg(url);
    let (out, cpu) = run(cmd)?;
    let mut result = parse_wrk(&out).with_context(|| format!("wrk printed:\n{out}"))?;
    result.cpu_s = cpu;
    Ok(result)
}

/// h2load: one thread, `connections` × `streams` concurrent requests, for
/// `duration`; latency percentiles come from its per-request log.
pub fn h2load(
    url: &str,
    connections: u32,
    streams: u32,
    duration: Duration,
    log: &Path,
) -> Result<LoadResult> {
    let mut cmd = Command::new("h2load");
    cmd.args(["-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-m{streams}"))
        .arg(format!("-D{}", duration.as_secs().max(1)))
        .arg("--log-file")
        .arg(log)
        .arg(url);
    let (out, cpu) = run(cmd)?;
    let log = std::fs::read_to_string(log).context("h2load's log")?;
    let mut result = parse_h2load(&out, &log).with_context(|| format!("h2load printed:\n{out}"))?;
    result.cpu_s = cpu;
    Ok(result)
}

/// `1.41ms`, `812.00us`, `1.00s`, `2.00m` → milliseconds.
fn parse_duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        "h" => n * 3600e3,
        _ => return None,
    })
}

/// `37.64MB` (wrk counts in powers of 1024) → bytes.
fn parse_size(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "" | "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(n * scale)
}

fn parse_wrk(out: &str) -> Result<LoadResult> {
    let mut p50 = None;
    let mut p99 = None;
    let mut requests = None;
    let mut bytes_per_s = None;
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => p50 = parse_duration_ms(v),
            ["99%", v] => p99 = parse_duration_ms(v),
            [n, "requests", "in", secs, ..] => {
                let secs = secs.trim_end_matches(',');
                requests = Some((
                    n.parse::<u64>()?,
                    parse_duration_ms(secs).context("wrk's duration")? / 1e3,
                ));
            }
            ["Transfer/sec:", v] => bytes_per_s = parse_size(v),
            ["Non-2xx", "or", "3xx", "responses:", n] => bail!("{n} responses were not 2xx or 3xx"),
            ["Socket", "errors:", rest @ ..] => {
                // `connect 0, read 0, write 0, timeout 0`: read errors are
                // closed keep-alive connections, the rest are failures.
                let counts: Vec<(&str, u64)> = rest
                    .chunks(2)
                    .filter_map(|c| Some((c[0], c.get(1)?.trim_end_matches(',').parse().ok()?)))
                    .collect();
                if let Some((what, n)) = counts.iter().find(|(w, n)| *w != "read" && *n > 0) {
                    bail!("{n} socket errors ({what})");
                }
            }
            _ => {}
        }
    }
    let (requests, seconds) = requests.context("no request count")?;
    if requests == 0 {
        bail!("no request was answered");
    }
    Ok(LoadResult {
        requests,
        seconds,
        bytes_per_s: bytes_per_s.context("no Transfer/sec")?,
        p50_ms: p50.context("no 50% latency")?,
        p99_ms: p99.context("no 99% latency")?,
        cpu_s: 0.0,
    })
}

fn parse_h2load(out: &str, log: &str) -> Result<LoadResult> {
    let mut seconds = None;
    let mut bytes_per_s = None;
    let mut requests = None;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // `finished in 10.00s, 150000.00 req/s, 170.00MB/s`
            let parts: Vec<&str> = rest.split(", ").collect();
            seconds = parts
                .first()
                .and_then(|s| parse_duration_ms(s))
                .map(|ms| ms / 1e3);
            bytes_per_s = parts
                .get(2)
                .and_then(|s| s.strip_suffix("/s"))
                .and_then(parse_size);
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // `N total, N started, N done, N succeeded, N failed, N errored, N timeout`
            let count = |what: &str| -> Option<u64> {
                rest.split(", ")
                    .find(|p| p.ends_with(what))?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            };
            let (failed, errored) = (count("failed"), count("errored"));
            if failed.unwrap_or(0) + errored.unwrap_or(0) > 0 {
                bail!("{line}");
            }
            requests = count("succeeded");
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            if !rest.starts_with(|c: char| c.is_ascii_digit())
                || rest.split(", ").skip(1).any(|p| !p.starts_with("0 "))
            {
                bail!("not every answer was 2xx: {line}");
            }
        }
    }
    let mut durations_us: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    let requests = requests.context("no request count")?;
    if requests == 0 || durations_us.is_empty() {
        bail!("no request was answered");
    }
    durations_us.sort_unstable();
    let pct =
        |p: f64| durations_us[((durations_us.len() - 1) as f64 * p).round() as usize] as f64 / 1e3;
    Ok(LoadResult {
        requests,
        seconds: seconds.context("no duration")?,
        bytes_per_s: bytes_per_s.context("no MB/s")?,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        cpu_s: 0.0,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const WRK: &str = "Running 10s test @ https://127.0.0.1:18443/1k.bin
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.50ms  322.10us   9.31ms   90.12%
    Req/Sec    34.60k     1.20k   36.50k    71.00%
  Latency Distribution
     50%    1.41ms
     75%    1.60ms
     90%    1.86ms
     99%  812.00us
  344334 requests in 10.00s, 376.45MB read
  Socket errors: connect 0, read 3, write 0, timeout 0
Requests/sec:  34431.55
Transfer/sec:     37.64MB
";

    #[test]
    fn wrk_output_is_parsed() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.requests, 344_334);
        assert!((r.seconds - 10.0).abs() < 1e-9);
        assert!((r.p50_ms - 1.41).abs() < 1e-9);
        assert!((r.p99_ms - 0.812).abs() < 1e-9);
        assert!((r.bytes_per_s - 37.64 * 1024.0 * 1024.0).abs() < 1.0);
    }

    #[test]
    fn wrk_errors_fail_the_run() {
        let timeouts = WRK.replace("timeout 0", "timeout 7");
        assert!(parse_wrk(&timeouts)
            .unwrap_err()
            .to_string()
            .contains("7 socket errors (timeout)"));
        let non2xx = WRK.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 12\nRequests/sec",
        );
        assert!(parse_wrk(&non2xx)
            .unwrap_err()
            .to_string()
            .contains("12 responses"));
        let none = WRK.replace("344334 requests", "0 requests");
        assert!(parse_wrk(&none).is_err());
    }

    const H2LOAD: &str = "finished in 2.00s, 150000.50 req/s, 170.25MB/s
requests: 300001 total, 300321 started, 300001 done, 300001 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 300001 2xx, 0 3xx, 0 4xx, 0 5xx
";

    #[test]
    fn h2load_output_and_log_are_parsed() {
        let log: String = (1..=100)
            .map(|i| format!("1700000000{i:06}\t200\t{}\n", i * 10))
            .collect();
        let r = parse_h2load(H2LOAD, &log).unwrap();
        assert_eq!(r.requests, 300_001);
        assert!((r.seconds - 2.0).abs() < 1e-9);
        assert!((r.bytes_per_s - 170.25 * 1024.0 * 1024.0).abs() < 1.0);
        assert!((r.p50_ms - 0.51).abs() < 1e-9, "{}", r.p50_ms);
        assert!((r.p99_ms - 0.99).abs() < 1e-9, "{}", r.p99_ms);
    }

    #[test]
    fn h2load_failures_fail_the_run() {
        let log = "1\t200\t10\n";
        let failed = H2LOAD.replace("0 failed", "4 failed");
        assert!(parse_h2load(&failed, log).is_err());
        let not_found = H2LOAD.replace("0 4xx", "9 4xx");
        assert!(parse_h2load(&not_found, log).is_err());
    }
}
