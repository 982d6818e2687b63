//! Medians over the runs, as a markdown table, CSV files and an SVG chart.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::runner::{Sample, Scenario, SCENARIOS};
use crate::servers::{Server, ALL};

/// One scenario and server over all runs.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: Scenario,
    pub server: Server,
    pub runs: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub server_us: Option<f64>,
    pub server_cpu: f64,
    pub load_cpu: f64,
    pub bottleneck: &'static str,
    /// edgebox only: its median against the best peer's (above 1: better).
    pub vs_best_peer: Option<f64>,
}

/// The median (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn median_of(samples: &[&Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    let values: Vec<f64> = samples.iter().filter_map(|s| f(s)).collect();
    (!values.is_empty()).then(|| median(&values))
}

/// "Better than" as a ratio above 1, for either direction of goodness.
fn ratio(scenario: Scenario, ours: f64, theirs: f64) -> f64 {
    if scenario.higher_is_better() {
        ours / theirs
    } else {
        theirs / ours
    }
}

/// The best median of the servers other than edgebox in `scenario`.
fn best_peer(rows: &[Row], scenario: Scenario) -> Option<f64> {
    rows.iter()
        .filter(|r| r.scenario == scenario && r.server != Server::Edgebox)
        .map(|r| r.median)
        .max_by(|a, b| ratio(scenario, *a, *b).total_cmp(&1.0))
}

pub fn summarize(samples: &[Sample]) -> Vec<Row> {
    let mut rows = Vec::new();
    for scenario in SCENARIOS {
        for server in ALL {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.scenario == scenario && s.server == server)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let values: Vec<f64> = mine.iter().map(|s| s.value).collect();
            let median_value = median(&values);
            // The bottleneck of the run whose value is nearest the median.
            let typical = mine
                .iter()
                .min_by(|a, b| {
                    (a.value - median_value)
                        .abs()
                        .total_cmp(&(b.value - median_value).abs())
                })
                .map_or("-", |s| s.bottleneck());
            rows.push(Row {
                scenario,
                server,
                runs: mine.len(),
                median: median_value,
                min: values.iter().copied().fold(f64::INFINITY, f64::min),
                max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                p50_ms: median_of(&mine, |s| s.p50_ms),
                p99_ms: median_of(&mine, |s| s.p99_ms),
                server_us: median_of(&mine, |s| s.server_us),
                server_cpu: median_of(&mine, |s| Some(s.server_cpu)).unwrap_or(0.0),
                load_cpu: median_of(&mine, |s| Some(s.load_cpu)).unwrap_or(0.0),
                bottleneck: typical,
                vs_best_peer: None,
            });
        }
    }
    for i in 0..rows.len() {
        if rows[i].server != Server::Edgebox {
            continue;
        }
        let scenario = rows[i].scenario;
        rows[i].vs_best_peer =
            best_peer(&rows, scenario).map(|p| ratio(scenario, rows[i].median, p));
    }
    rows
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

fn figure(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | server | median (min..max) | edgebox ÷ best peer | p50 ms | p99 ms | server CPU µs/req | server CPU | load core CPU | bottleneck |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} {} ({}..{}) | {} | {} | {} | {} | {:.0} % | {:.0} % | {} |",
            r.scenario.name(),
            r.server.name(),
            figure(r.median),
            r.scenario.unit(),
            figure(r.min),
            figure(r.max),
            r.vs_best_peer
                .map_or_else(String::new, |x| format!("**{x:.2}×**")),
            opt(r.p50_ms, 2),
            opt(r.p99_ms, 2),
            opt(r.server_us, 1),
            r.server_cpu * 100.0,
            r.load_cpu * 100.0,
            r.bottleneck,
        );
    }
    out
}

pub fn summary_csv(rows: &[Row]) -> String {
    let mut out = String::from("scenario,server,unit,runs,median,min,max,vs_best_peer,p50_ms,p99_ms,server_us_per_req,server_cpu,load_cpu,bottleneck\n");
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{:.3},{:.3},{:.3},{},{},{},{},{:.3},{:.3},{}",
            r.scenario.name(),
            r.server.name(),
            r.scenario.unit(),
            r.runs,
            r.median,
            r.min,
            r.max,
            opt(r.vs_best_peer, 3),
            opt(r.p50_ms, 3),
            opt(r.p99_ms, 3),
            opt(r.server_us, 2),
            r.server_cpu,
            r.load_cpu,
            r.bottleneck
        );
    }
    out
}

pub fn samples_csv(samples: &[Sample]) -> String {
    let mut out = String::from(
        "scenario,server,run,unit,value,p50_ms,p99_ms,server_us_per_req,server_cpu,load_cpu,note\n",
    );
    for s in samples {
        let _ = writeln!(
            out,
            "{},{},{},{},{:.3},{},{},{},{:.3},{:.3},\"{}\"",
            s.scenario.name(),
            s.server.name(),
            s.run + 1,
            s.scenario.unit(),
            s.value,
            opt(s.p50_ms, 3),
            opt(s.p99_ms, 3),
            opt(s.server_us, 2),
            s.server_cpu,
            s.load_cpu,
            s.note.replace('"', "'")
        );
    }
    out
}

/// Bars: each server's median against the best peer's in its scenario (1.0),
/// inverted for memory so that taller is better everywhere; whiskers span
/// min..max.
pub fn chart(rows: &[Row], path: &Path, title: &str) -> Result<()> {
    use plotters::prelude::*;

    let scenarios: Vec<Scenario> = SCENARIOS
        .into_iter()
        .filter(|s| rows.iter().any(|r| r.scenario == *s))
        .collect();
    // Without a peer in the scenario (`--server edgebox`), edgebox is 1.0.
    let best_peer = |s: Scenario| {
        best_peer(rows, s)
            .or_else(|| rows.iter().find(|r| r.scenario == s).map(|r| r.median))
            .unwrap_or(1.0)
    };
    let bars: Vec<(usize, usize, f64, f64, f64)> = rows
        .iter()
        .filter_map(|r| {
            let x = scenarios.iter().position(|s| *s == r.scenario)?;
            let k = ALL.iter().position(|s| *s == r.server)?;
            let best = best_peer(r.scenario);
            let (lo, hi) = if r.scenario.higher_is_better() {
                (r.min, r.max)
            } else {
                (r.max, r.min)
            };
            Some((
                x,
                k,
                ratio(r.scenario, r.median, best),
                ratio(r.scenario, lo, best),
                ratio(r.scenario, hi, best),
            ))
        })
        .collect();
    let top = bars.iter().map(|b| b.4).fold(1.5, f64::max) * 1.1;
    let colors = [
        RGBColor(0x2b, 0x8c, 0x3e),
        RGBColor(0x8e, 0x44, 0xad),
        RGBColor(0x29, 0x80, 0xb9),
        RGBColor(0xe6, 0x7e, 0x22),
    ];

    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE).context("chart")?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..scenarios.len() as f64, 0f64..top)
        .context("chart")?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(scenarios.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 {
                scenarios
                    .get(i)
                    .map_or_else(String::new, |s| s.name().to_owned())
            } else {
                String::new()
            }
        })
        .y_desc("× the best peer (higher is better)")
        .draw()
        .context("chart")?;
    let width = 0.8 / ALL.len() as f64;
    for (k, server) in ALL.iter().enumerate() {
        let color = colors[k];
        let mine: Vec<_> = bars.iter().filter(|b| b.1 == k).collect();
        chart
            .draw_series(mine.iter().map(|&&(x, _, v, _, _)| {
                let left = x as f64 + 0.1 + k as f64 * width;
                Rectangle::new([(left, 0.0), (left + width * 0.9, v)], color.filled())
            }))
            .context("chart")?
            .label(server.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        chart
            .draw_series(mine.iter().map(|&&(x, _, _, lo, hi)| {
                let mid = x as f64 + 0.1 + k as f64 * width + width * 0.45;
                PathElement::new(vec![(mid, lo), (mid, hi)], BLACK.stroke_width(1))
            }))
            .context("chart")?;
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 1.0), (scenarios.len() as f64, 1.0)],
            BLACK.mix(0.4),
        )))
        .context("chart")?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .context("chart")?;
    root.present().context("chart")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample(scenario: Scenario, server: Server, run: usize, value: f64) -> Sample {
        Sample {
            scenario,
            server,
            run,
            value,
            p50_ms: Some(1.0),
            p99_ms: Some(2.0),
            server_us: Some(20.0),
            server_cpu: 1.0,
            load_cpu: 0.5,
            note: String::new(),
        }
    }

    #[test]
    fn medians_and_ratios_against_the_best_peer() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let mut samples = Vec::new();
        for (run, (n, h, e)) in [(30.0, 40.0, 60.0), (34.0, 45.0, 50.0), (36.0, 41.0, 70.0)]
            .into_iter()
            .enumerate()
        {
            samples.push(sample(Scenario::Static1k, Server::Nginx, run, n));
            samples.push(sample(Scenario::Static1k, Server::H2o, run, h));
            samples.push(sample(Scenario::Static1k, Server::Edgebox, run, e));
        }
        // Memory: lower is better, so the best peer is the smallest.
        samples.push(sample(Scenario::IdleMemory, Server::Nginx, 0, 4.0));
        samples.push(sample(Scenario::IdleMemory, Server::Haproxy, 0, 2.0));
        samples.push(sample(Scenario::IdleMemory, Server::Edgebox, 0, 8.0));
        let rows = summarize(&samples);
        let row = |sc, sv| {
            rows.iter()
                .find(|r| r.scenario == sc && r.server == sv)
                .unwrap()
        };
        let e = row(Scenario::Static1k, Server::Edgebox);
        assert_eq!((e.median, e.min, e.max, e.runs), (60.0, 50.0, 70.0, 3));
        assert!((e.vs_best_peer.unwrap() - 60.0 / 41.0).abs() < 1e-9);
        assert_eq!(row(Scenario::Static1k, Server::Nginx).vs_best_peer, None);
        assert!(
            (row(Scenario::IdleMemory, Server::Edgebox)
                .vs_best_peer
                .unwrap()
                - 0.25)
                .abs()
                < 1e-9
        );
        assert_eq!(
            rows[0].scenario,
            Scenario::IdleMemory,
            "rows follow the scenario order"
        );

        let table = markdown(&rows);
        assert!(
            table.contains("| static-1k-https | edgebox | 60.0 req/s (50.0..70.0) | **1.46×** |"),
            "{table}"
        );
        let csv = summary_csv(&rows);
        assert_eq!(csv.lines().count(), rows.len() + 1);

        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("chart.svg");
        chart(&rows, &svg, "test").unwrap();
        let svg = std::fs::read_to_string(svg).unwrap();
        assert!(
            svg.contains("static-1k-https") && svg.contains("edgebox"),
            "{svg}"
        );
    }

    #[test]
    fn the_bottleneck_is_the_saturated_side() {
        let mut s = sample(Scenario::Static1k, Server::Nginx, 0, 1.0);
        assert_eq!(s.bottleneck(), "server CPU");
        s.server_cpu = 0.6;
        s.load_cpu = 0.97;
        assert_eq!(s.bottleneck(), "load core");
        s.load_cpu = 0.5;
        assert_eq!(s.bottleneck(), "neither (latency-bound)");
    }
}
