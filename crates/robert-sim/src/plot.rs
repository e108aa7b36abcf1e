//! Plots with `plotters`, in PNG and SVG. Text is drawn with DejaVu Sans, compiled in and
//! registered from bytes (`ab_glyph`), so plotting needs no system font and no fontconfig.

use crate::SimResults;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The font is compiled in and known to parse; a failure would only lose the text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// A series: its label, colour and points.
struct Series {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

fn chart<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    legend: SeriesLabelPosition,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    let y1 = ys.fold(0.0f64, f64::max);
    let (x0, x1) = if x0.is_finite() && x1 > x0 { (x0, x1) } else { (0.0, 1.0) };
    let y1 = if y1 > 0.0 { y1 * 1.08 } else { 1.0 };
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, 0.0..y1)
        .map_err(err)?;
    c.configure_mesh().x_desc(x_desc).y_desc(y_desc).label_style(("sans-serif", 14)).draw().map_err(err)?;
    for s in series {
        let color = s.color;
        c.draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        c.draw_series(s.points.iter().map(|&p| Circle::new(p, 2, color.filled()))).map_err(err)?;
    }
    c.configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(legend)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn both(
    dir: &Path,
    name: &str,
    title: &str,
    x: &str,
    y: &str,
    series: &[Series],
) -> Result<Vec<PathBuf>, String> {
    // The legend goes where these charts have no data: recall and precision stay high.
    let legend = if name == "recall_by_loss" {
        SeriesLabelPosition::LowerLeft
    } else {
        SeriesLabelPosition::UpperLeft
    };
    let png = dir.join(format!("{name}.png"));
    let svg = dir.join(format!("{name}.svg"));
    chart(BitMapBackend::new(&png, (960, 600)).into_drawing_area(), title, x, y, series, legend.clone())
        .map_err(|e| format!("{}: {e}", png.display()))?;
    chart(SVGBackend::new(&svg, (960, 600)).into_drawing_area(), title, x, y, series, legend.clone())
        .map_err(|e| format!("{}: {e}", svg.display()))?;
    Ok(vec![png, svg])
}

fn daily(r: &crate::engine::RunResult, f: impl Fn(&crate::epidemic::DayCounts) -> u32) -> Vec<(f64, f64)> {
    r.daily.iter().map(|d| (f64::from(d.day + 1), f64::from(f(d)))).collect()
}

/// Writes every plot of `results` into `dir`; returns the files written.
pub fn write_all(results: &SimResults, dir: &Path) -> Result<Vec<PathBuf>, String> {
    register_font();
    let mut files = Vec::new();
    let t = &results.traced;
    // Without tracing first, so the traced curves are drawn on top where they coincide.
    let mut epi = Vec::new();
    if let Some(u) = &results.untraced {
        epi.push(Series {
            label: "infectious, without tracing".into(),
            color: RGBColor(30, 60, 200),
            points: daily(u, |d| d.infectious),
        });
        epi.push(Series {
            label: "ever infected, without tracing".into(),
            color: RGBColor(20, 160, 200),
            points: daily(u, |d| d.exposed + d.infectious + d.recovered),
        });
    }
    epi.push(Series {
        label: "infectious, with tracing".into(),
        color: RGBColor(200, 30, 30),
        points: daily(t, |d| d.infectious),
    });
    epi.push(Series {
        label: "ever infected, with tracing".into(),
        color: RGBColor(230, 130, 20),
        points: daily(t, |d| d.exposed + d.infectious + d.recovered),
    });
    files.extend(both(
        dir,
        "epidemic",
        "Epidemic with and without tracing (same seed)",
        "day",
        "people",
        &epi,
    )?);
    let notif = vec![
        Series {
            label: "notified (at risk)".into(),
            color: RGBColor(200, 30, 30),
            points: daily(t, |d| d.new_notifications),
        },
        Series {
            label: "diagnosed".into(),
            color: RGBColor(30, 60, 200),
            points: daily(t, |d| d.new_diagnoses),
        },
        Series { label: "isolating".into(), color: RGBColor(40, 150, 60), points: daily(t, |d| d.isolating) },
    ];
    files.extend(both(
        dir,
        "notifications",
        "Notifications, diagnoses and isolation per day",
        "day",
        "people",
        &notif,
    )?);
    if !results.loss_sweep.is_empty() {
        let pct = |f: &dyn Fn(&crate::LossPoint) -> f64| -> Vec<(f64, f64)> {
            results.loss_sweep.iter().map(|p| (p.loss * 100.0, f(p) * 100.0)).collect()
        };
        let rec = vec![
            Series { label: "recall".into(), color: RGBColor(200, 30, 30), points: pct(&|p| p.recall) },
            Series { label: "precision".into(), color: RGBColor(30, 60, 200), points: pct(&|p| p.precision) },
        ];
        files.extend(both(
            dir,
            "recall_by_loss",
            "Notification recall and precision by radio loss",
            "radio loss (%)",
            "%",
            &rec,
        )?);
    }
    Ok(files)
}
