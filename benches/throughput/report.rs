//! The table (stdout, Markdown and JSON) and the targets.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::Plan;
use crate::run::Outcome;

/// `x` rounded, with thousands separators.
pub fn num(x: f64) -> String {
    let s = format!("{:.0}", x.round());
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn ms(x: f64) -> String {
    if x >= 100.0 { format!("{x:.0}") } else { format!("{x:.1}") }
}

/// One row per outcome; the scale rows take the smallest scale run as their baseline.
pub fn table(outcomes: &[Outcome]) -> String {
    let head = [
        "configuration",
        "sagas",
        "in flight",
        "sagas/s",
        "transitions/s",
        "commits/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "peak RSS MiB",
        "CPU s/1k sagas",
        "baseline",
        "baseline rate",
        "ratio",
    ];
    let smallest_scale = outcomes.iter().filter(|o| o.kind == "scale").min_by_key(|o| o.parked.unwrap_or(u64::MAX));
    let mut rows = Vec::new();
    for o in outcomes {
        let (p50, p99, max) =
            o.latency.map_or(("-".into(), "-".into(), "-".into()), |l| (ms(l.p50_ms), ms(l.p99_ms), ms(l.max_ms)));
        let in_flight = match (o.kind.as_str(), o.rate_target) {
            ("scale", _) => format!("{} + {}", num(o.parked.unwrap_or(0) as f64), num(o.in_flight as f64)),
            ("recovery", _) => num(o.sagas as f64),
            (_, Some(_)) => "open loop".into(),
            _ => num(o.in_flight as f64),
        };
        let (baseline, rate, ratio) = match (&o.baseline, o.kind.as_str()) {
            (Some(b), _) => {
                (b.name.clone(), format!("{} {}/s", num(b.rate), b.unit), format!("{:.1}%", b.ratio * 100.0))
            }
            (None, "scale") => match smallest_scale {
                Some(s) if s.parked != o.parked => (
                    format!("{} parked", num(s.parked.unwrap_or(0) as f64)),
                    format!("{} sagas/s", num(s.sagas_per_s)),
                    format!("{:.1}%", o.sagas_per_s / s.sagas_per_s.max(1e-9) * 100.0),
                ),
                _ => ("-".into(), "-".into(), "-".into()),
            },
            (None, "soak") => match &o.soak {
                Some(s) => (
                    format!("first tenth {} sagas/s", num(s.first_tenth_per_s)),
                    format!("last tenth {} sagas/s", num(s.last_tenth_per_s)),
                    format!("{:.1}%", s.last_tenth_per_s / s.first_tenth_per_s.max(1e-9) * 100.0),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            },
            (None, "recovery") => (
                format!(
                    "open {:.2} s, build {:.2} s",
                    o.open_s.unwrap_or(0.0),
                    o.build_s.unwrap_or(0.0) - o.open_s.unwrap_or(0.0)
                ),
                format!("all moved at {:.2} s", o.recovered_s.unwrap_or(0.0)),
                "-".into(),
            ),
            _ => ("-".into(), "-".into(), "-".into()),
        };
        let dash_if_zero = |x: f64| if x > 0.0 { num(x) } else { "-".into() };
        rows.push(vec![
            o.label.clone(),
            num(o.sagas as f64),
            in_flight,
            num(o.sagas_per_s),
            dash_if_zero(o.transitions_per_s),
            dash_if_zero(o.commits_per_s),
            p50,
            p99,
            max,
            format!("{:.0}", o.peak_rss_mib),
            format!("{:.2}", o.cpu_s_per_1k),
            baseline,
            rate,
            ratio,
        ]);
    }
    markdown(&head, &rows)
}

fn markdown(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(head.iter().map(|h| (*h).to_owned()).collect());
    out += &line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for row in rows {
        out += &line(row.clone());
    }
    out
}

/// One of the targets, checked against this run.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub target: String,
    pub measured: String,
    /// "met", "missed" or "not measured".
    pub verdict: String,
}

fn verdict(ok: Option<bool>) -> String {
    match ok {
        Some(true) => "met".into(),
        Some(false) => "missed".into(),
        None => "not measured".into(),
    }
}

pub fn targets(outcomes: &[Outcome], plan: &Plan) -> Vec<Target> {
    let find =
        |label: &str| outcomes.iter().find(|o| o.kind == "workload" && o.rate_target.is_none() && o.label == label);
    let mut out = Vec::new();
    let memory = find(crate::run::Config::Memory.label());
    out.push(Target {
        target: "memory store ≥ 100,000 step transitions/s".into(),
        measured: memory.map_or("-".into(), |o| format!("{} transitions/s", num(o.transitions_per_s))),
        verdict: verdict(memory.map(|o| o.transitions_per_s >= 100_000.0)),
    });
    for (config, min) in [(crate::run::Config::SledGroup, 0.5), (crate::run::Config::SledImmediate, 0.8)] {
        let o = find(config.label());
        let ratio = o.and_then(|o| o.baseline.as_ref()).map(|b| b.ratio);
        out.push(Target {
            target: format!("{} ≥ {:.0}% of raw sled with the same flush pattern", config.label(), min * 100.0),
            measured: ratio.map_or("-".into(), |r| format!("{:.1}%", r * 100.0)),
            verdict: verdict(ratio.map(|r| r >= min)),
        });
    }
    // One row's rate against another's, both measured in this run.
    let against = |row: crate::run::Config, other: crate::run::Config, min: f64, target: String| {
        let (row, other) = (find(row.label()), find(other.label()));
        let ratio = row.zip(other).map(|(r, o)| r.sagas_per_s / o.sagas_per_s.max(1e-9));
        Target {
            target,
            measured: match (row, other, ratio) {
                (Some(r), Some(o), Some(x)) => {
                    format!("{} against {} sagas/s: {:.1}%", num(r.sagas_per_s), num(o.sagas_per_s), x * 100.0)
                }
                _ => "-".into(),
            },
            verdict: verdict(ratio.map(|x| x >= min)),
        }
    };
    use crate::run::Config::{SledGroup, SledGroupLocal, SledGroupLocalRetained};
    out.push(against(
        SledGroupLocal,
        SledGroup,
        1.0,
        format!("{} ≥ {} (sagas/s)", SledGroupLocal.label(), SledGroup.label()),
    ));
    out.push(against(
        SledGroupLocalRetained,
        SledGroupLocal,
        0.9,
        format!("{} ≥ 90% of {} (sagas/s)", SledGroupLocalRetained.label(), SledGroupLocal.label()),
    ));
    let paced = outcomes.iter().find(|o| o.rate_target.is_some());
    let p99 = paced.and_then(|o| o.latency).map(|l| l.p99_ms);
    out.push(Target {
        target: "p99 saga latency under Group at half the peak rate ≤ 10 ms".into(),
        measured: match (paced, p99) {
            (Some(o), Some(p)) => format!("{} ms at {} sagas/s", ms(p), num(o.rate_target.unwrap_or(0.0))),
            _ => "-".into(),
        },
        verdict: verdict(p99.map(|p| p <= 10.0)),
    });
    let scale: Vec<&Outcome> = outcomes.iter().filter(|o| o.kind == "scale").collect();
    let small = scale.iter().min_by_key(|o| o.parked.unwrap_or(0));
    let large = scale.iter().max_by_key(|o| o.parked.unwrap_or(0)).filter(|l| l.parked != small.and_then(|s| s.parked));
    let (measured, verdict_text) = match (small, large) {
        (Some(s), Some(l)) => {
            let (ps, pl) = (s.parked.unwrap_or(0) as f64, l.parked.unwrap_or(0) as f64);
            let mb = |mib: f64| mib * 1.048_576;
            if pl >= 1_000_000.0 {
                let ratio = l.sagas_per_s / s.sagas_per_s.max(1e-9);
                let ok = mb(l.peak_rss_mib) <= 300.0 && ratio >= 0.8;
                (
                    format!(
                        "peak RSS {:.0} MB, {:.1}% of the 1,000-in-flight throughput",
                        mb(l.peak_rss_mib),
                        ratio * 100.0
                    ),
                    verdict(Some(ok)),
                )
            } else {
                // Linear in the number parked, through the two measured points.
                let at = |a: f64, b: f64| a + (b - a) * (1_000_000.0 - ps) / (pl - ps).max(1.0);
                let rss = at(mb(s.peak_rss_mib), mb(l.peak_rss_mib));
                let ratio = at(s.sagas_per_s, l.sagas_per_s).max(0.0) / s.sagas_per_s.max(1e-9);
                let ok = rss <= 300.0 && ratio >= 0.8;
                (
                    format!(
                        "measured with {} parked: peak RSS {:.0} MB, {:.1}% of the 1,000-in-flight throughput; \
                         extrapolated to 1,000,000: {:.0} MB, {:.0}%",
                        num(pl),
                        mb(l.peak_rss_mib),
                        l.sagas_per_s / s.sagas_per_s.max(1e-9) * 100.0,
                        rss,
                        ratio * 100.0
                    ),
                    format!("{} (extrapolated)", verdict(Some(ok))),
                )
            }
        }
        _ => ("-".into(), verdict(None)),
    };
    out.push(Target {
        target: "1,000,000 in flight: peak RSS ≤ 300 MB and ≥ 80% of the 1,000-in-flight throughput".into(),
        measured,
        verdict: verdict_text,
    });
    let recovery = outcomes.iter().find(|o| o.kind == "recovery");
    out.push(Target {
        target: format!("recovery of {} in-flight sagas ≤ 2 s", num(plan.recovery as f64)),
        measured: recovery.map_or("-".into(), |o| {
            format!(
                "every saga moved a step at {:.2} s (the verdict); every stranded command re-published at {:.2} s",
                o.recovered_s.unwrap_or(0.0),
                o.build_s.unwrap_or(0.0)
            )
        }),
        verdict: verdict(recovery.map(|o| o.recovered_s.unwrap_or(f64::MAX) <= 2.0)),
    });
    let rabbit = find(crate::run::Config::RabbitMq.label());
    let ratio = rabbit.and_then(|o| o.baseline.as_ref()).map(|b| b.ratio);
    out.push(Target {
        target: "RabbitMQ (memory store) ≥ 50% of raw lapin".into(),
        measured: ratio.map_or("-".into(), |r| format!("{:.1}%", r * 100.0)),
        verdict: verdict(ratio.map(|r| r >= 0.5)),
    });
    out.extend(soak_targets(outcomes.iter().find_map(|o| o.soak.as_ref().map(|s| (o, s)))));
    let postgres = find(crate::run::Config::Postgres { processes: 1, rabbitmq: false }.label());
    let ratio = postgres.and_then(|o| o.baseline.as_ref()).map(|b| b.ratio);
    out.push(Target {
        target: "PostgreSQL store and bus, 1 process ≥ 50% of raw sqlx doing its commits".into(),
        measured: ratio.map_or("-".into(), |r| format!("{:.1}%", r * 100.0)),
        verdict: verdict(ratio.map(|r| r >= 0.5)),
    });
    out
}

/// The soak row's targets: memory and disk flat over the run (the second half within 10% of
/// the first), the disk it holds per saga, and the rate kept to the end.
fn soak_targets(soak: Option<(&Outcome, &crate::soak::SoakFigures)>) -> Vec<Target> {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let flat = |first: f64, second: f64| second <= first * 1.1;
    let sagas = soak.map_or_else(|| "-".into(), |(o, _)| num(o.sagas as f64));
    vec![
        Target {
            target: format!(
                "soak of {sagas} sagas with retention: peak RSS flat (second half ≤ 110% of the first, after warm-up)"
            ),
            measured: soak.map_or("-".into(), |(_, s)| {
                format!("{:.0} MiB, then {:.0} MiB", s.rss_first_half_mib, s.rss_second_half_mib)
            }),
            verdict: verdict(soak.map(|(_, s)| flat(s.rss_first_half_mib, s.rss_second_half_mib))),
        },
        Target {
            target: "soak: store on disk flat (second half ≤ 110% of the first), bytes per saga run".into(),
            measured: soak.map_or("-".into(), |(o, s)| {
                format!(
                    "{:.1} MiB, then {:.1} MiB, {:.1} MiB at the end: {:.0} bytes per saga run",
                    mib(s.disk_first_half),
                    mib(s.disk_second_half),
                    mib(s.disk_end),
                    s.disk_end as f64 / o.sagas.max(1) as f64
                )
            }),
            verdict: verdict(soak.map(|(_, s)| flat(s.disk_first_half as f64, s.disk_second_half as f64))),
        },
        Target {
            target: "soak: the last tenth's rate ≥ 90% of the first tenth's".into(),
            measured: soak.map_or("-".into(), |(_, s)| {
                format!("{} against {} sagas/s", num(s.last_tenth_per_s), num(s.first_tenth_per_s))
            }),
            verdict: verdict(soak.map(|(_, s)| s.last_tenth_per_s >= 0.9 * s.first_tenth_per_s)),
        },
    ]
}

pub fn targets_table(targets: &[Target]) -> String {
    let rows: Vec<Vec<String>> =
        targets.iter().map(|t| vec![t.target.clone(), t.measured.clone(), t.verdict.clone()]).collect();
    markdown(&["target", "measured", "verdict"], &rows)
}

#[derive(Serialize)]
struct Report<'a> {
    mode: &'a str,
    command: String,
    cores: usize,
    total_s: f64,
    outcomes: &'a [Outcome],
    targets: &'a [Target],
    notes: &'a [String],
}

pub fn write(
    dir: &Path,
    name: &str,
    plan: &Plan,
    outcomes: &[Outcome],
    targets: &[Target],
    notes: &[String],
    total: Duration,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut md = String::new();
    let _ = writeln!(md, "# sagaflow throughput ({} run)\n", plan.mode);
    let _ = writeln!(md, "{cores} cores, {:.0} s in all.\n", total.as_secs_f64());
    md += &table(outcomes);
    md += "\n";
    md += &targets_table(targets);
    if !notes.is_empty() {
        md += "\n";
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    let mut details = String::new();
    for o in outcomes {
        let mut parts = Vec::new();
        if o.kind == "workload" {
            parts.push(format!(
                "{} completed, {} compensated, {} failed; {} commits ({:.1} per saga, {} refused and re-run); \
                 {} messages ({:.1} per saga, {:.0} payload bytes each)",
                o.completed,
                o.compensated,
                o.failed,
                o.commits,
                o.commits as f64 / o.sagas.max(1) as f64,
                o.refused,
                o.messages,
                o.messages as f64 / o.sagas.max(1) as f64,
                o.payload_bytes_per_message
            ));
        }
        if let Some(b) = o.bytes_per_commit {
            parts.push(format!("{b:.0} bytes written per commit"));
        }
        if let Some(b) = &o.baseline {
            parts.push(format!(
                "baseline {}: {} {} in {:.2} s, {:.2} CPU s ({:.0} µs per {}; the configuration: {:.0} µs)",
                b.name,
                b.units,
                b.unit,
                b.elapsed_s,
                b.cpu_s,
                b.cpu_s / b.units.max(1) as f64 * 1e6,
                b.unit.trim_end_matches('s'),
                o.cpu_s / b.units.max(1) as f64 * 1e6
            ));
        }
        if let (Some(p), Some(s)) = (o.park_s, o.parked) {
            parts.push(format!(
                "parked {} in {:.1} s ({} sagas/s), RSS after parking {:.0} MiB, store {:.0} MiB on disk",
                s,
                p,
                num(s as f64 / p.max(1e-9)),
                o.rss_after_park_mib.unwrap_or(0.0),
                o.store_bytes.unwrap_or(0) as f64 / (1024.0 * 1024.0)
            ));
        }
        parts.extend(o.notes.iter().cloned());
        if !parts.is_empty() {
            let _ = writeln!(details, "- {}: {}", o.label, parts.join("; "));
        }
    }
    if !details.is_empty() {
        md += "\n";
        md += &details;
    }
    std::fs::write(dir.join(format!("{name}.md")), md)?;
    let report = Report { mode: plan.mode, command, cores, total_s: total.as_secs_f64(), outcomes, targets, notes };
    let json = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(format!("{name}.json")), json)
}
