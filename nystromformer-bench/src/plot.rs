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

/// Line colours; after the tenth series they repeat with another marker shape.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
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
        // Ticks at the measured x values and at 1-2-5 steps in y: plotters' own log ticks
        // crowd into unreadable runs at the top of each decade.
        .build_cartesian_2d(
            (x_lo..x_hi).log_scale().with_key_points(x_ticks(series)),
            (y_lo..y_hi)
                .log_scale()
                .with_key_points(y_ticks(y_lo, y_hi)),
        )?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|x| tick_label(*x))
        .y_label_formatter(&|y| tick_label(*y))
        .draw()?;
    for (i, (name, line)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let marker = i / COLORS.len() % 3;
        chart
            .draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        let points = line.iter().copied();
        match marker {
            0 => chart.draw_series(points.map(|p| Circle::new(p, 3, color.filled())))?,
            1 => chart.draw_series(points.map(|p| TriangleMarker::new(p, 5, color.filled())))?,
            _ => chart.draw_series(points.map(|p| Cross::new(p, 4, color.stroke_width(2))))?,
        };
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

/// The distinct x values of the series, thinned to at most ten labels.
fn x_ticks(series: &[Series]) -> Vec<f64> {
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, _)| x))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let step = xs.len().div_ceil(10).max(1);
    xs.into_iter().step_by(step).collect()
}

/// 1, 2 and 5 times the powers of ten inside `lo..=hi`; powers of ten alone when that would
/// be more than twelve labels.
fn y_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let decades = lo.log10().floor() as i32..=hi.log10().ceil() as i32;
    let ticks = |mantissas: &[f64]| -> Vec<f64> {
        decades
            .clone()
            .flat_map(|e| mantissas.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|t| (lo * (1.0 - 1e-9)..=hi * (1.0 + 1e-9)).contains(t))
            .collect()
    };
    let fine = ticks(&[1.0, 2.0, 5.0]);
    if fine.len() > 12 { ticks(&[1.0]) } else { fine }
}

/// A tick value without float noise: whole numbers plainly, small ones to three significant
/// digits.
fn tick_label(v: f64) -> String {
    if v >= 1.0 {
        format!("{}", v.round())
    } else {
        let digits = (2 - v.log10().floor() as i32).max(0) as usize;
        let text = format!("{v:.digits$}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
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
                    lines
                        .entry(crate::report::series_name(r))
                        .or_default()
                        .push((r.n as f64, v));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_ticks_are_the_measured_values_thinned_to_ten() {
        let few: Vec<Series> = vec![("a".into(), vec![(512.0, 1.0), (1024.0, 2.0)])];
        assert_eq!(x_ticks(&few), vec![512.0, 1024.0]);
        let many: Vec<Series> = vec![("a".into(), (0..16).map(|i| (2f64.powi(i), 1.0)).collect())];
        let ticks = x_ticks(&many);
        assert!(ticks.len() <= 10, "{ticks:?}");
        assert_eq!(ticks[0], 1.0);
    }

    #[test]
    fn y_ticks_step_one_two_five_within_the_range() {
        assert_eq!(y_ticks(0.8, 60.0), vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0]);
        let wide = y_ticks(0.01, 1e6);
        assert!((wide[0] - 0.01).abs() < 1e-12, "{wide:?}");
        assert_eq!(wide.len(), 9);
        assert!(wide.windows(2).all(|w| (w[1] / w[0] - 10.0).abs() < 1e-9));
    }

    #[test]
    fn tick_labels_have_no_float_noise() {
        assert_eq!(tick_label(16384.0), "16384");
        assert_eq!(tick_label(0.05), "0.05");
        assert_eq!(tick_label(0.2), "0.2");
        assert_eq!(tick_label(0.1 + 0.2), "0.3");
    }
}
