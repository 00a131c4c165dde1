//! Charts of the records, each written as SVG and PNG: time and peak memory against n on log-log
//! axes, one line per implementation and backend; and approximation error against landmarks.
//!
//! Text in the PNGs is drawn with DejaVu Sans, embedded from `assets/fonts` so that charts render
//! the same on machines without a font library.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
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

const SIZE: (u32, u32) = (900, 560);

/// One line of a chart.
pub type Series = (String, Vec<(f64, f64)>);

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let font = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
        plotters::style::register_font("sans-serif", FontStyle::Normal, font)
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans is a valid font"));
    });
}

/// A log-log line chart written to `stem.svg` and `stem.png`; returns both paths.
pub fn loglog_chart(
    stem: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<Vec<String>, String> {
    let points = || series.iter().flat_map(|(_, p)| p.iter().copied());
    let (x_min, x_max) = points().fold((f64::MAX, f64::MIN), |(lo, hi), (x, _)| {
        (lo.min(x), hi.max(x))
    });
    let (y_min, y_max) = points().fold((f64::MAX, f64::MIN), |(lo, hi), (_, y)| {
        (lo.min(y), hi.max(y))
    });
    if !(x_min > 0.0 && y_min > 0.0 && x_max > x_min) {
        return Err(format!("{}: nothing to plot", stem.display()));
    }
    register_font();
    let range = ((x_min * 0.9, x_max * 1.1), (y_min * 0.8, y_max * 1.25));
    let labels = (title, x_label, y_label);
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    draw(
        SVGBackend::new(&svg, SIZE).into_drawing_area(),
        labels,
        range,
        series,
    )
    .map_err(|err| format!("{}: {err}", svg.display()))?;
    draw(
        BitMapBackend::new(&png, SIZE).into_drawing_area(),
        labels,
        range,
        series,
    )
    .map_err(|err| format!("{}: {err}", png.display()))?;
    Ok(vec![svg.display().to_string(), png.display().to_string()])
}

type Range = ((f64, f64), (f64, f64));

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    (title, x_label, y_label): (&str, &str, &str),
    ((x_lo, x_hi), (y_lo, y_hi)): Range,
    series: &[Series],
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())?;
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
}

/// Time and memory charts per (processor, pass) group of the records, named
/// `time-<group>.{svg,png}` and `memory-<group>.{svg,png}` in `dir`.
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
        written.extend(loglog_chart(
            &dir.join(format!("time-{group}")),
            &format!("time, {group}"),
            "sequence length n",
            "median ms",
            &series(|r| r.median_ms),
        )?);
        let memory = series(|r| r.peak_bytes.map(|b| b as f64 / 1048576.0));
        if !memory.is_empty() {
            written.extend(loglog_chart(
                &dir.join(format!("memory-{group}")),
                &format!("peak memory, {group}"),
                "sequence length n",
                "MiB",
                &memory,
            )?);
        }
    }
    Ok(written)
}

/// `quality.{svg,png}` from `dir/quality.ndjson`: relative error against landmarks, one line per
/// input source and iteration count (exact initialisation), if that file exists.
pub fn quality_chart(dir: &Path) -> Result<Vec<String>, String> {
    let source = dir.join("quality.ndjson");
    let Ok(text) = std::fs::read_to_string(&source) else {
        return Ok(Vec::new());
    };
    let mut lines: BTreeMap<(String, u64), Vec<(f64, f64)>> = BTreeMap::new();
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
        let inputs = value["inputs"].as_str().unwrap_or("random").to_string();
        lines.entry((inputs, iters)).or_default().push((m, error));
    }
    let series: Vec<Series> = lines
        .into_iter()
        .map(|((inputs, iters), p)| (format!("{inputs}, {iters} iterations"), p))
        .collect();
    loglog_chart(
        &dir.join("quality"),
        "relative error vs landmarks (exact init)",
        "landmarks m",
        "relative error",
        &series,
    )
}
