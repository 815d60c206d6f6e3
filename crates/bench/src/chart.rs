//! SVG bar charts of the matrix (plotters, SVG backend: no fonts or system libraries needed).

use std::path::Path;

use plotters::prelude::*;

use super::results::{workload, Peer, Results, Row};
use super::{RunResult, Rw, Workload};

/// One bar series: a label and how to find its result for a workload.
struct Series {
    label: String,
    peer: Peer,
    mode: String,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(90, 90, 90),
    RGBColor(31, 119, 180),
    RGBColor(174, 199, 232),
    RGBColor(214, 39, 40),
    RGBColor(255, 152, 150),
    RGBColor(44, 160, 44),
    RGBColor(152, 223, 138),
    RGBColor(148, 103, 189),
];

fn series(with_direct: bool) -> Vec<Series> {
    let mut out = Vec::new();
    if with_direct {
        out.push(Series {
            label: "direct (io_uring, no daemon)".into(),
            peer: Peer::Direct,
            mode: "io_uring/none".into(),
        });
    }
    for aio in ["io_uring", "native", "threads"] {
        for peer in [Peer::Vblkd, Peer::Qsd] {
            out.push(Series {
                label: format!(
                    "{} {aio}",
                    if peer == Peer::Vblkd { "vblkd" } else { "QSD" }
                ),
                peer,
                mode: format!("{aio}/none"),
            });
        }
    }
    out
}

/// A grouped bar chart: one group per workload, one bar per series.
fn grouped_bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    groups: &[(String, Workload)],
    series: &[Series],
    results: &Results,
    value: impl Fn(&RunResult) -> Option<f64>,
) -> Result<(), String> {
    let values: Vec<Vec<Option<f64>>> = groups
        .iter()
        .map(|(_, w)| {
            series
                .iter()
                .map(|s| results.get(s.peer, &s.mode, w).and_then(&value))
                .collect()
        })
        .collect();
    let max = values
        .iter()
        .flatten()
        .flatten()
        .fold(0.0f64, |a, &b| a.max(b));
    let top = if max > 0.0 { max * 1.15 } else { 1.0 };
    let err = |e: &dyn std::fmt::Display| format!("chart {}: {e}", path.display());

    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let n = groups.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)
        .map_err(|e| err(&e))?;
    let names: Vec<String> = groups.iter().map(|(name, _)| name.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * n + 1)
        .x_label_formatter(&|x| {
            // Group g is labelled at its middle, g + 0.5.
            names
                .iter()
                .enumerate()
                .find(|&(g, _)| (x - (g as f64 + 0.5)).abs() < 1e-6)
                .map_or_else(String::new, |(_, name)| name.clone())
        })
        .y_desc(y_desc)
        .y_label_formatter(&|v| {
            if top >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        })
        .draw()
        .map_err(|e| err(&e))?;
    let width = 0.8 / series.len() as f64;
    for (s, ser) in series.iter().enumerate() {
        let color = COLORS[s % COLORS.len()];
        let bars = values.iter().enumerate().filter_map(|(g, vals)| {
            let v = vals[s]?;
            let x0 = g as f64 + 0.1 + s as f64 * width;
            Some(Rectangle::new(
                [(x0, 0.0), (x0 + width * 0.9, v)],
                color.filled(),
            ))
        });
        chart
            .draw_series(bars)
            .map_err(|e| err(&e))?
            .label(ser.label.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Writes the charts; returns (file name, title) pairs for the report.
pub fn write_all(dir: &Path, rows: &[Row]) -> Result<Vec<(String, String)>, String> {
    let results = Results::new(rows);
    let four_k: Vec<(String, Workload)> = [
        (Rw::Randread, 1),
        (Rw::Randread, 32),
        (Rw::Randwrite, 1),
        (Rw::Randwrite, 32),
    ]
    .into_iter()
    .map(|(rw, qd)| {
        (
            format!("4k {} QD{qd}", rw.name()),
            workload(rw, 4096, qd, 1),
        )
    })
    .collect();
    let mut charts = Vec::new();

    grouped_bars(
        &dir.join("iops.svg"),
        "IOPS, cache=none, one queue",
        "IOPS",
        &four_k,
        &series(true),
        &results,
        |r| Some(r.iops),
    )?;
    charts.push(("iops.svg".to_string(), "IOPS, cache=none".to_string()));

    grouped_bars(
        &dir.join("cpu.svg"),
        "Daemon CPU per I/O, cache=none, one queue",
        "µs per I/O",
        &four_k,
        &series(false),
        &results,
        |r| r.daemon_cpu_us_per_io,
    )?;
    charts.push((
        "cpu.svg".to_string(),
        "Daemon CPU per I/O, cache=none".to_string(),
    ));

    let null_groups: Vec<(String, Workload)> = [1, 2]
        .into_iter()
        .map(|q| {
            (
                format!("4k randread QD32, {q} queue(s)"),
                workload(Rw::Randread, 4096, 32, q),
            )
        })
        .collect();
    let null_series = [Peer::Vblkd, Peer::Qsd]
        .into_iter()
        .map(|peer| Series {
            label: format!("{} null", peer.name()),
            peer,
            mode: "null".into(),
        })
        .collect::<Vec<_>>();
    grouped_bars(
        &dir.join("null.svg"),
        "Null disk: the daemon's own cost (IOPS)",
        "IOPS",
        &null_groups,
        &null_series,
        &results,
        |r| Some(r.iops),
    )?;
    charts.push(("null.svg".to_string(), "Null disk IOPS".to_string()));
    Ok(charts)
}
