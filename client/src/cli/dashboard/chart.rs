//! Line charts as inline SVG, drawn on the server: no script, nothing to install.

use maud::{html, Markup};

const COLORS: [&str; 8] = [
    "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
];

/// One line: a name for the legend and (ms since the epoch, value) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: &'a [(i64, f64)],
}

/// Scales points into a `w` x `h` box (y grows downwards): the polyline's `points` text.
fn polyline(points: &[(i64, f64)], t0: i64, t1: i64, ymax: f64, w: f64, h: f64) -> String {
    let span = (t1 - t0).max(1) as f64;
    points
        .iter()
        .map(|&(t, v)| {
            let x = (t - t0) as f64 / span * w;
            let y = h - (v / ymax).clamp(0.0, 1.0) * h;
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn bounds(series: &[Series<'_>]) -> Option<(i64, i64, f64)> {
    let all = series.iter().flat_map(|s| s.points.iter());
    let t0 = all.clone().map(|p| p.0).min()?;
    let t1 = all.clone().map(|p| p.0).max()?;
    let ymax = all.map(|p| p.1).fold(0.0, f64::max);
    Some((t0, t1, if ymax > 0.0 { ymax * 1.1 } else { 1.0 }))
}

fn clock(ms: i64) -> String {
    // The time of day of the UTC timestamp (the pages say UTC).
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

fn short(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e4 => format!("{:.0}k", v / 1e3),
        v if v >= 100.0 => format!("{v:.0}"),
        v => format!("{v:.1}"),
    }
}

/// A chart with axes and a legend; `data-points` holds the number of points drawn.
pub fn chart(title: &str, unit: &str, series: &[Series<'_>]) -> Markup {
    let (w, h, left, top) = (640.0, 180.0, 56.0, 8.0);
    let points: usize = series.iter().map(|s| s.points.len()).sum();
    let Some((t0, t1, ymax)) = bounds(series) else {
        return html! {
            figure.chart data-points="0" {
                figcaption { (title) }
                p.muted { "Collecting samples..." }
            }
        };
    };
    html! {
        figure.chart data-points=(points) {
            figcaption { (title) " (" (unit) ")" }
            svg width=(w + left + 8.0) height=(h + top + 24.0) role="img" aria-label=(title) {
                g transform={"translate(" (left) "," (top) ")"} {
                    line.axis x1="0" y1=(h) x2=(w) y2=(h) {}
                    line.axis x1="0" y1="0" x2="0" y2=(h) {}
                    text.tick x="-6" y="10" text-anchor="end" { (short(ymax)) }
                    text.tick x="-6" y=(h) text-anchor="end" { "0" }
                    text.tick x="0" y=(h + 16.0) { (clock(t0)) }
                    text.tick x=(w) y=(h + 16.0) text-anchor="end" { (clock(t1)) " UTC" }
                    @for (i, s) in series.iter().enumerate() {
                        polyline fill="none" stroke-width="2" stroke=(COLORS[i % COLORS.len()])
                            points=(polyline(s.points, t0, t1, ymax, w, h)) {}
                    }
                }
            }
            @if series.len() > 1 {
                ul.legend {
                    @for (i, s) in series.iter().enumerate() {
                        li { span.swatch style={"background:" (COLORS[i % COLORS.len()])} {} (s.name) }
                    }
                }
            }
        }
    }
}

/// A small chart without axes, for table rows.
pub fn sparkline(points: &[(i64, f64)]) -> Markup {
    let series = [Series { name: "", points }];
    let Some((t0, t1, ymax)) = bounds(&series) else {
        return html! { span.muted { "-" } };
    };
    html! {
        svg.spark width="120" height="24" {
            polyline fill="none" stroke="#2563eb" stroke-width="1.5"
                points=(polyline(points, t0, t1, ymax, 120.0, 22.0)) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_scale_into_the_box() {
        let pts = [(1_000, 0.0), (2_000, 5.0), (3_000, 10.0)];
        assert_eq!(
            polyline(&pts, 1_000, 3_000, 10.0, 100.0, 50.0),
            "0.0,50.0 50.0,25.0 100.0,0.0"
        );
        assert_eq!(clock(3_723_000), "01:02:03");
        let svg = chart(
            "lag",
            "messages",
            &[Series {
                name: "a",
                points: &pts,
            }],
        )
        .into_string();
        assert!(svg.contains("data-points=\"3\""), "{svg}");
        let empty = chart(
            "lag",
            "messages",
            &[Series {
                name: "a",
                points: &[],
            }],
        )
        .into_string();
        assert!(empty.contains("Collecting samples"), "{empty}");
    }
}
