//! Merging records (ours and the PyTorch peers') into CSV and a Markdown table with a reading:
//! growth exponents and crossover lengths.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::record::Record;

/// Reads every `*.jsonl` file of `dir`.
pub fn read_records(dir: &Path) -> Result<Vec<Record>, String> {
    let mut records = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
    {
        let text =
            std::fs::read_to_string(path).map_err(|err| format!("{}: {err}", path.display()))?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let record: Record = serde_json::from_str(line)
                .map_err(|err| format!("{}:{}: {err}", path.display(), i + 1))?;
            records.push(record);
        }
    }
    Ok(records)
}

/// CSV with one line per record.
pub fn to_csv(records: &[Record]) -> String {
    let mut out = String::from(
        "implementation,backend,pass,batch,heads,n,head_dim,landmarks,padded,median_ms,min_ms,max_ms,reps,peak_bytes,status,commit,machine\n",
    );
    let opt = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.4}"));
    for r in records {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},\"{}\",{},\"{}\"",
            r.implementation,
            r.backend,
            r.pass,
            r.batch,
            r.heads,
            r.n,
            r.head_dim,
            r.landmarks,
            r.padded,
            opt(r.median_ms),
            opt(r.min_ms),
            opt(r.max_ms),
            r.reps,
            r.peak_bytes.map_or(String::new(), |b| b.to_string()),
            r.status.replace('"', "'"),
            r.commit,
            r.machine.replace('"', "'")
        );
    }
    out
}

/// Least-squares slope of `log y` against `log x`.
pub fn loglog_slope(points: &[(f64, f64)]) -> Option<f64> {
    let points: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .map(|(x, y)| (x.ln(), y.ln()))
        .collect();
    if points.len() < 2 {
        return None;
    }
    let count = points.len() as f64;
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / count,
        points.iter().map(|p| p.1).sum::<f64>() / count,
    );
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Markdown: per (processor kind, pass, batch, heads, head_dim) one table of n × implementation
/// and backend (Burn's and PyTorch's side by side) with median ms and peak MiB, then growth
/// exponents and crossovers.
pub fn to_markdown(records: &[Record]) -> String {
    type Group = (String, String, usize, usize, usize);
    let mut groups: BTreeMap<Group, Vec<&Record>> = BTreeMap::new();
    for r in records {
        groups
            .entry((
                processor(&r.backend).into(),
                r.pass.clone(),
                r.batch,
                r.heads,
                r.head_dim,
            ))
            .or_default()
            .push(r);
    }
    let mut out = String::new();
    for ((processor, pass, batch, heads, head_dim), rows) in &groups {
        let _ = writeln!(
            out,
            "### {processor}, {pass}, batch {batch}, {heads} heads of {head_dim}\n"
        );
        let mut columns: Vec<String> = rows.iter().map(|r| series_name(r)).collect();
        columns.sort();
        columns.dedup();
        let mut lengths: Vec<usize> = rows.iter().map(|r| r.n).collect();
        lengths.sort_unstable();
        lengths.dedup();
        let _ = writeln!(out, "| n | {} |", columns.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(columns.len()));
        for n in &lengths {
            let cells: Vec<String> = columns
                .iter()
                .map(
                    |c| match rows.iter().find(|r| r.n == *n && series_name(r) == *c) {
                        Some(r) if r.median_ms.is_some() => format!(
                            "{:.2} ms{}",
                            r.median_ms.unwrap(),
                            r.peak_bytes.map_or(String::new(), |b| format!(
                                ", {:.0} MiB",
                                b as f64 / 1048576.0
                            ))
                        ),
                        Some(r) => r.status.split(':').next().unwrap_or("").to_string(),
                        None => String::new(),
                    },
                )
                .collect();
            let _ = writeln!(out, "| {n} | {} |", cells.join(" | "));
        }
        let _ = writeln!(out);
        for c in &columns {
            let series = |value: fn(&Record) -> Option<f64>| -> Vec<(f64, f64)> {
                rows.iter()
                    .filter(|r| series_name(r) == *c)
                    .filter_map(|r| value(r).map(|v| (r.n as f64, v)))
                    .collect()
            };
            let time = loglog_slope(&series(|r| r.median_ms));
            let memory = loglog_slope(&series(|r| r.peak_bytes.map(|b| b as f64)));
            let fmt = |s: Option<f64>| s.map_or("n/a".into(), |s| format!("{s:.2}"));
            let _ = writeln!(
                out,
                "- {c}: time grows as n^{}, peak memory as n^{}",
                fmt(time),
                fmt(memory)
            );
        }
        if let Some(cross) = crossover(rows) {
            let _ = writeln!(out, "- {cross}");
        }
        let _ = writeln!(out);
    }
    out
}

/// The name of a record's series in tables and charts: implementation, landmarks, padding and
/// backend.
pub fn series_name(r: &Record) -> String {
    let padded = match r.padded {
        0.0 => String::new(),
        fraction => format!(" padded {:.0}%", fraction * 100.0),
    };
    if r.landmarks > 0 {
        format!(
            "{} m={}{padded} [{}]",
            r.implementation, r.landmarks, r.backend
        )
    } else {
        format!("{}{padded} [{}]", r.implementation, r.backend)
    }
}

/// Records of the same processor share a table: CPU backends, or GPU ones.
fn processor(backend: &str) -> &'static str {
    if ["flex", "ndarray", "cpu"]
        .iter()
        .any(|cpu| backend.contains(cpu))
    {
        "CPU"
    } else {
        "GPU"
    }
}

/// The first length from which the library's Nyström beats every exact implementation measured.
fn crossover(rows: &[&Record]) -> Option<String> {
    let mut lengths: Vec<usize> = rows.iter().map(|r| r.n).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let ours: Vec<&&Record> = rows
        .iter()
        .filter(|r| {
            r.implementation == "nystrom"
                && r.backend.starts_with("burn")
                && r.padded == 0.0
                && r.median_ms.is_some()
        })
        .collect();
    let landmarks: Vec<usize> = {
        let mut m: Vec<usize> = ours.iter().map(|r| r.landmarks).collect();
        m.sort_unstable();
        m.dedup();
        m
    };
    let mut lines = Vec::new();
    for m in landmarks {
        let first = lengths.iter().find(|n| {
            let mine = ours
                .iter()
                .find(|r| r.n == **n && r.landmarks == m)
                .and_then(|r| r.median_ms);
            let best_exact = rows
                .iter()
                .filter(|r| {
                    r.n == **n
                        && r.landmarks == 0
                        && r.padded == 0.0
                        && r.backend.starts_with("burn")
                })
                .filter_map(|r| r.median_ms)
                .fold(f64::INFINITY, f64::min);
            // No exact record at this length: nothing to beat, no crossover claimed.
            best_exact.is_finite() && matches!(mine, Some(t) if t < best_exact)
        });
        if let Some(n) = first {
            lines.push(format!(
                "Burn: nystrom (m={m}) is faster than every exact Burn implementation from n = {n}"
            ));
        }
    }
    (!lines.is_empty()).then(|| lines.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(implementation: &str, landmarks: usize, n: usize, ms: f64) -> Record {
        Record {
            implementation: implementation.into(),
            backend: "burn-flex".into(),
            pass: "forward".into(),
            batch: 1,
            heads: 8,
            n,
            head_dim: 64,
            landmarks,
            padded: 0.0,
            median_ms: Some(ms),
            min_ms: Some(ms),
            max_ms: Some(ms),
            reps: 1,
            peak_bytes: Some((n * n) as u64),
            status: "ok".into(),
            commit: "test".into(),
            machine: "test".into(),
        }
    }

    #[test]
    fn slope_recovers_a_power_law() {
        let points: Vec<(f64, f64)> = [512.0, 1024.0, 4096.0]
            .iter()
            .map(|n: &f64| (*n, 3.0 * n.powi(2)))
            .collect();
        assert!((loglog_slope(&points).unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(loglog_slope(&points[..1]), None);
    }

    #[test]
    fn markdown_reports_exponents_and_the_crossover() {
        let records = vec![
            record("naive-softmax", 0, 512, 1.0),
            record("naive-softmax", 0, 1024, 4.0),
            record("naive-softmax", 0, 2048, 16.0),
            record("nystrom", 64, 512, 3.0),
            record("nystrom", 64, 1024, 6.0),
            record("nystrom", 64, 2048, 12.0),
        ];
        let markdown = to_markdown(&records);
        assert!(
            markdown.contains("naive-softmax [burn-flex]: time grows as n^2.00"),
            "{markdown}"
        );
        assert!(
            markdown.contains("nystrom m=64 [burn-flex]: time grows as n^1.00"),
            "{markdown}"
        );
        assert!(markdown.contains("from n = 2048"), "{markdown}");
        assert_eq!(to_csv(&records).lines().count(), 7);

        // Nyström variants alone: no exact time to beat, so no crossover line.
        let nystrom_only = &records[3..];
        assert!(
            !to_markdown(nystrom_only).contains("faster than every exact"),
            "{}",
            to_markdown(nystrom_only)
        );
    }
}
