//! The replay's HTML report: one self-contained file (inline SVG charts
//! drawn by plotters, inline CSS, no scripts), readable in any browser
//! without a server.

use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;
use std::fmt::Write as _;

use super::analysis::{Analysis, fmt_ratio};
use crate::error::chain;

/// Why a chart of the report is left out; the report says so in its place.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// There is nothing to draw.
    #[error("{0}")]
    Nothing(&'static str),
    /// Plotters could not draw the chart.
    #[error("cannot draw the chart")]
    Draw {
        /// The drawing error.
        #[from]
        source: DrawingAreaErrorKind<std::io::Error>,
    },
}

const WIDTH: u32 = 900;
const HEIGHT: u32 = 340;
const BLUE: RGBColor = RGBColor(52, 101, 164);
const ORANGE: RGBColor = RGBColor(214, 95, 0);
const GREY: RGBColor = RGBColor(120, 120, 120);

/// Renders the report for `analysis` of the replay named `title`.
pub fn render(title: &str, analysis: &Analysis) -> String {
    let mut html = String::new();
    let t = escape(title);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>vigil replay: {t}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n<h1>vigil replay</h1>\n<p class=\"sub\">{t}</p>\n"
    );
    summary_tables(&mut html, analysis);
    let charts: [(&str, Result<String, ReportError>); 4] = [
        ("Alerts over time", alerts_over_time(analysis)),
        ("Score distribution", score_distribution(analysis)),
        ("Hits per rule", rule_hits(analysis)),
        ("Precision per rule", rule_precision(analysis)),
    ];
    for (name, chart) in charts {
        let _ = writeln!(html, "<section class=\"chart\"><h2>{name}</h2>");
        match chart {
            Ok(svg) => html.push_str(&svg),
            Err(why) => {
                let _ = write!(html, "<p class=\"note\">{}</p>", escape(&chain(&why).to_string()));
            }
        }
        html.push_str("</section>\n");
    }
    html.push_str("</body>\n</html>\n");
    html
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:960px;color:#222}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}
.note{color:#666;font-style:italic}section.chart svg{max-width:100%;height:auto}
";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn summary_tables(html: &mut String, a: &Analysis) {
    let c = &a.counts;
    let _ = write!(
        html,
        "<h2>Summary</h2>\n<table><tr><th>events read</th><th>decided</th><th>dead-lettered</th><th>late</th>\
         <th>allow</th><th>review</th><th>block</th></tr>\n<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td></tr></table>\n",
        c.events_in, c.decided, c.dead_lettered, c.late, a.allow, a.review, a.block
    );
    if let Some(label) = &a.label {
        let m = &a.overall;
        let _ = write!(
            html,
            "<h2>Against the labels (<code>{}</code>)</h2>\n<p>{} fraud, {} legitimate, {} unlabelled among decided \
             events; flagged means review or block.</p>\n<table><tr><th></th><th>fraud</th><th>legitimate</th></tr>\
             <tr><td>flagged</td><td>{}</td><td>{}</td></tr><tr><td>allowed</td><td>{}</td><td>{}</td></tr></table>\n\
             <p>precision <b>{}</b>, recall <b>{}</b>, F1 <b>{}</b></p>\n",
            escape(label),
            a.fraud,
            a.legit,
            a.unlabelled,
            m.tp,
            m.fp,
            m.fn_,
            m.tn,
            fmt_ratio(m.precision()),
            fmt_ratio(m.recall()),
            fmt_ratio(m.f1())
        );
    }
    html.push_str("<h2>Rules</h2>\n<table><tr><th>rule</th><th>mode</th><th>hits</th><th>review</th><th>block</th><th>errors</th>");
    if a.label.is_some() {
        html.push_str("<th>tp</th><th>fp</th><th>precision</th><th>recall</th><th>F1</th>");
    }
    html.push_str("</tr>\n");
    for (name, s) in &a.rules {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            escape(name),
            escape(&s.mode),
            s.hits(),
            s.review,
            s.block,
            s.errors
        );
        if a.label.is_some() {
            let m = &s.confusion;
            let _ = write!(
                html,
                "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
                m.tp,
                m.fp,
                fmt_ratio(m.precision()),
                fmt_ratio(m.recall()),
                fmt_ratio(m.f1())
            );
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
}

/// Runs a drawing into an SVG string.
fn svg(
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> Result<(), ReportError>,
) -> Result<String, ReportError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(out)
}

fn hour_label(start_ms: i64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(start_ms / 1000) else {
        return String::new();
    };
    format!("{:02}-{:02} {:02}h", u8::from(t.month()), t.day(), t.hour())
}

/// Flagged decisions and labelled fraud per hour of event time.
fn alerts_over_time(a: &Analysis) -> Result<String, ReportError> {
    let (Some(first), Some(last)) = (a.hours.keys().next(), a.hours.keys().next_back()) else {
        return Err(ReportError::Nothing("no decisions"));
    };
    let hour = 3_600_000;
    let span = (last - first) / hour + 1;
    let series = |f: fn(&super::analysis::Hour) -> u64| -> Vec<(i64, u64)> {
        (0..span).map(|i| (i, a.hours.get(&(first + i * hour)).map_or(0, f))).collect()
    };
    let flagged = series(|h| h.flagged);
    let fraud = series(|h| h.fraud);
    let caught = series(|h| h.caught);
    let top = flagged.iter().chain(&fraud).map(|p| p.1).max().unwrap_or(0).max(1);
    let first = *first;
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0..span.max(2) - 1, 0..top + top / 10 + 1)?;
        chart
            .configure_mesh()
            .x_labels(8)
            .x_label_formatter(&|i| hour_label(first + i * hour))
            .y_desc("events per hour")
            .draw()?;
        let lines = [
            ("flagged (review or block)", flagged, BLUE),
            ("labelled fraud", fraud, ORANGE),
            ("fraud flagged", caught, GREY),
        ];
        for (name, points, colour) in lines {
            if a.label.is_none() && name != "flagged (review or block)" {
                continue;
            }
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        Ok(())
    })
}

/// Share of fraud and of legitimate events by final score band.
fn score_distribution(a: &Analysis) -> Result<String, ReportError> {
    if a.scores.is_empty() {
        return Err(ReportError::Nothing("no decisions"));
    }
    let max = a.scores.iter().map(|s| s.0).max().unwrap_or(0).max(0);
    // About ten bands of a round width.
    let width = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000]
        .into_iter()
        .find(|w| (max + 1) as f64 / (*w as f64) <= 10.0)
        .unwrap_or(((max + 1) / 10).max(1));
    let bands = ((max / width) + 1) as usize;
    let mut counts = [vec![0u64; bands], vec![0u64; bands]];
    let mut totals = [0u64; 2];
    for (score, label) in &a.scores {
        let class = usize::from(*label == Some(true));
        let band = (score.max(&0) / width) as usize;
        counts[class][band.min(bands - 1)] += 1;
        totals[class] += 1;
    }
    let share = |class: usize, band: usize| -> f64 {
        if totals[class] == 0 { 0.0 } else { counts[class][band] as f64 * 100.0 / totals[class] as f64 }
    };
    let labelled = a.label.is_some();
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..bands as f64, 0f64..105f64)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bands.min(12))
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-6 { format!("{}", (x.round() as i64) * width) } else { String::new() }
            })
            .x_desc("final score (band start)")
            .y_desc(if labelled { "% of the class" } else { "% of decisions" })
            .draw()?;
        let classes: &[(usize, &str, RGBColor, f64)] = if labelled {
            &[(0, "legitimate", BLUE, 0.1), (1, "fraud", ORANGE, 0.5)]
        } else {
            &[(0, "all decisions", BLUE, 0.1)]
        };
        let bar = if labelled { 0.4 } else { 0.8 };
        for &(class, name, colour, offset) in classes {
            chart
                .draw_series((0..bands).map(|b| {
                    let x = b as f64 + offset;
                    Rectangle::new([(x, 0.0), (x + bar, share(class, b))], colour.filled())
                }))?
                .label(name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        Ok(())
    })
}

fn rule_bars(
    a: &Analysis,
    y_desc: &str,
    top: f64,
    value: impl Fn(&super::analysis::RuleStats) -> f64,
) -> Result<String, ReportError> {
    let names: Vec<&String> = a.rules.keys().collect();
    if names.is_empty() {
        return Err(ReportError::Nothing("no rules ran"));
    }
    let n = names.len();
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((0..n).into_segmented(), 0f64..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n + 1)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i).map_or(String::new(), |s| (*s).clone()),
                _ => String::new(),
            })
            .y_desc(y_desc)
            .draw()?;
        chart.draw_series(
            Histogram::vertical(&chart)
                .style(BLUE.filled())
                .margin(24)
                .data(a.rules.values().enumerate().map(|(i, s)| (i, value(s)))),
        )?;
        Ok(())
    })
}

/// Reviews and blocks per rule.
fn rule_hits(a: &Analysis) -> Result<String, ReportError> {
    let top = a.rules.values().map(|s| s.hits()).max().unwrap_or(0).max(1) as f64 * 1.1;
    rule_bars(a, "hits (review or block)", top, |s| s.hits() as f64)
}

/// Each rule's hits that were labelled fraud.
fn rule_precision(a: &Analysis) -> Result<String, ReportError> {
    if a.label.is_none() {
        return Err(ReportError::Nothing("no labels given: precision needs --label or a mapping with `label`"));
    }
    rule_bars(a, "precision (share of hits that are fraud)", 1.05, |s| s.confusion.precision().unwrap_or(0.0))
}
