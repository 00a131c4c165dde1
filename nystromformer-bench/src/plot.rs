//! Charts of the records (SVG): time and peak memory against n on log-log axes, one line per
//! implementation and backend; and approximation error against landmarks.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::record::Record;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One line of a chart.
pub type Series = (String, Vec<(f64, f64)>);

/// A log-log line chart written as SVG.
pub fn loglog_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), String> {
    let points = || series.iter().flat_map(|(_, p)| p.iter().copied());
    let (x_min, x_max) = points().fold((f64::MAX, f64::MIN), |(lo, hi), (x, _)| {
        (lo.min(x), hi.max(x))
    });
    let (y_min, y_max) = points().fold((f64::MAX, f64::MIN), |(lo, hi), (_, y)| {
        (lo.min(y), hi.max(y))
    });
    if !(x_min > 0.0 && y_min > 0.0 && x_max > x_min) {
        return Err(format!("{}: nothing to plot", path.display()));
    }
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (x_min * 0.9..x_max * 1.1).log_scale(),
                (y_min * 0.8..y_max * 1.25).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()?;
        for (i, (name, line)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(line.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|err| format!("{}: {err}", path.display()))
}

/// Time and memory charts per (processor, pass) group of the records, named
/// `time-<group>.svg` and `memory-<group>.svg` in `dir`.
pub fn record_charts(dir: &Path, records: &[Record]) -> Result<Vec<String>, String> {
    let mut groups: BTreeMap<String, Vec<&Record>> = BTreeMap::new();
    for r in records {
        let processor = if ["flex", "ndarray", "cpu"]
            .iter()
            .any(|c| r.backend.contains(c))
        {
            "cpu"
        } else {
            "gpu"
        };
        let pass = if r.pass == "forward" {
            "forward"
        } else {
            "backward"
        };
        groups
            .entry(format!(
                "{processor}-{pass}-b{}-h{}-d{}",
                r.batch, r.heads, r.head_dim
            ))
            .or_default()
            .push(r);
    }
    let mut written = Vec::new();
    for (group, rows) in groups {
        let series = |value: fn(&Record) -> Option<f64>| -> Vec<Series> {
            let mut lines: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
            for r in &rows {
                if let Some(v) = value(r).filter(|_| r.status == "ok") {
                    let name = if r.landmarks > 0 {
                        format!("{} m={} [{}]", r.implementation, r.landmarks, r.backend)
                    } else {
                        format!("{} [{}]", r.implementation, r.backend)
                    };
                    lines.entry(name).or_default().push((r.n as f64, v));
                }
            }
            lines
                .into_iter()
                .map(|(name, mut p)| {
                    p.sort_by(|a, b| a.0.total_cmp(&b.0));
                    (name, p)
                })
                .collect()
        };
        let time = dir.join(format!("time-{group}.svg"));
        loglog_chart(
            &time,
            &format!("time, {group}"),
            "sequence length n",
            "median ms",
            &series(|r| r.median_ms),
        )?;
        written.push(time.display().to_string());
        let memory = series(|r| r.peak_bytes.map(|b| b as f64 / 1048576.0));
        if !memory.is_empty() {
            let path = dir.join(format!("memory-{group}.svg"));
            loglog_chart(
                &path,
                &format!("peak memory, {group}"),
                "sequence length n",
                "MiB",
                &memory,
            )?;
            written.push(path.display().to_string());
        }
    }
    Ok(written)
}

/// `quality.svg` from `dir/quality.ndjson`: relative error against landmarks, one line per
/// iteration count (exact initialisation), if that file exists.
pub fn quality_chart(dir: &Path) -> Result<Option<String>, String> {
    let source = dir.join("quality.ndjson");
    let Ok(text) = std::fs::read_to_string(&source) else {
        return Ok(None);
    };
    let mut lines: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|err| format!("{}:{}: {err}", source.display(), i + 1))?;
        if value["pinv_init"] != "Exact" {
            continue;
        }
        let (Some(m), Some(iters), Some(error)) = (
            value["landmarks"].as_f64(),
            value["pinv_iterations"].as_u64(),
            value["relative_error"].as_f64(),
        ) else {
            return Err(format!("{}:{}: missing fields", source.display(), i + 1));
        };
        lines.entry(iters).or_default().push((m, error));
    }
    let series: Vec<Series> = lines
        .into_iter()
        .map(|(iters, p)| (format!("{iters} iterations"), p))
        .collect();
    let path = dir.join("quality.svg");
    loglog_chart(
        &path,
        "relative error vs landmarks (exact init)",
        "landmarks m",
        "relative error",
        &series,
    )?;
    Ok(Some(path.display().to_string()))
}
