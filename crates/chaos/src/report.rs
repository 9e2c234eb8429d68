//! The HTML report of a run: the verdict's checks, availability during each fault, and a
//! timeline of latency (every operation) and throughput (per second), the fault windows
//! shaded. One self-contained page: inline SVG, no script, nothing fetched.

use std::fmt::Write;

use serde_json::Value;

use crate::nemesis::FaultWindow;
use crate::verdict::Verdict;
use crate::workload::{Ended, TimelineOp};

const WIDTH: f64 = 1000.0;
const MARGIN_LEFT: f64 = 60.0;
const MARGIN_RIGHT: f64 = 20.0;
const LATENCY_HEIGHT: f64 = 260.0;
const THROUGHPUT_HEIGHT: f64 = 160.0;
/// The scatter draws at most this many operations of each outcome (evenly thinned).
const POINTS_MAX: usize = 10_000;
/// The latency axis: 0.1 ms to 10 s, log scale.
const LATENCY_MIN_MS: f64 = 0.1;
const LATENCY_MAX_MS: f64 = 10_000.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Axis {
    end_ms: f64,
}

impl Axis {
    fn x(&self, ms: f64) -> f64 {
        MARGIN_LEFT + (ms / self.end_ms).clamp(0.0, 1.0) * (WIDTH - MARGIN_LEFT - MARGIN_RIGHT)
    }
}

fn fault_shading(out: &mut String, axis: &Axis, faults: &[FaultWindow], height: f64, labels: bool) {
    for (index, fault) in faults.iter().enumerate() {
        let (x0, x1) = (axis.x(fault.start_ms as f64), axis.x(fault.end_ms as f64));
        let _ = write!(
            out,
            r##"<rect x="{x0:.1}" y="0" width="{:.1}" height="{height}" fill="#f4b6b6" opacity="0.45"><title>{}</title></rect>"##,
            (x1 - x0).max(1.0),
            escape(&fault.what)
        );
        if labels {
            let _ = write!(
                out,
                r##"<text x="{:.1}" y="{}" font-size="10" fill="#a33">{}</text>"##,
                x0 + 2.0,
                12 + (index % 3) * 11,
                escape(&fault.fault)
            );
        }
    }
}

fn time_ticks(out: &mut String, axis: &Axis, height: f64) {
    let seconds = (axis.end_ms / 1000.0).ceil() as u64;
    let step = (seconds / 10).max(1);
    for s in (0..=seconds).step_by(step as usize) {
        let x = axis.x(s as f64 * 1000.0);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{height}" x2="{x:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle">{s}s</text>"##,
            height + 4.0,
            height + 15.0
        );
    }
}

fn latency_plot(timeline: &[TimelineOp], faults: &[FaultWindow], axis: &Axis) -> String {
    let mut out = String::new();
    let height = LATENCY_HEIGHT;
    let _ = write!(
        out,
        r##"<svg width="{WIDTH}" height="{:.0}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif">"##,
        height + 20.0
    );
    fault_shading(&mut out, axis, faults, height, true);
    let y = |ms: f64| {
        let span = (LATENCY_MAX_MS / LATENCY_MIN_MS).log10();
        height - ((ms.max(LATENCY_MIN_MS) / LATENCY_MIN_MS).log10() / span).clamp(0.0, 1.0) * height
    };
    for ms in [0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0] {
        let _ = write!(
            out,
            r##"<line x1="{MARGIN_LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#eee"/><text x="{2}" y="{3:.1}" font-size="10" text-anchor="end">{ms} ms</text>"##,
            y(ms),
            WIDTH - MARGIN_RIGHT,
            MARGIN_LEFT - 4.0,
            y(ms) + 3.0
        );
    }
    // One path per outcome, a round dot per operation: a tenth of the bytes of circles.
    let mut paths: [(Ended, &str, String, usize, usize); 3] = [
        (Ended::Ok, "#2a7", String::new(), 0, 0),
        (Ended::Failed, "#e80", String::new(), 0, 0),
        (Ended::Unknown, "#d22", String::new(), 0, 0),
    ];
    for path in paths.iter_mut() {
        path.3 = timeline.iter().filter(|op| op.ended == path.0).count();
    }
    for op in timeline {
        let path = paths
            .iter_mut()
            .find(|p| p.0 == op.ended)
            .expect("every outcome has a path");
        path.4 += 1;
        if path.4 % path.3.div_ceil(POINTS_MAX).max(1) != 0 {
            continue;
        }
        // An unknown outcome has no latency: drawn at the top.
        let latency_ms = match (op.ended, op.completed_us) {
            (Ended::Unknown, _) | (_, None) => LATENCY_MAX_MS,
            (_, Some(done)) => (done - op.invoked_us) as f64 / 1000.0,
        };
        let _ = write!(
            path.2,
            "M{:.1} {:.1}h0",
            axis.x(op.invoked_us as f64 / 1000.0),
            y(latency_ms)
        );
    }
    for (_, color, d, _, _) in &paths {
        let _ = write!(
            out,
            r##"<path d="{d}" stroke="{color}" stroke-width="2.6" stroke-linecap="round"/>"##
        );
    }
    time_ticks(&mut out, axis, height);
    out.push_str("</svg>");
    out
}

fn throughput_plot(timeline: &[TimelineOp], faults: &[FaultWindow], axis: &Axis) -> String {
    let seconds = (axis.end_ms / 1000.0).ceil() as usize + 1;
    let mut ok = vec![0usize; seconds];
    let mut not_ok = vec![0usize; seconds];
    for op in timeline {
        let second = (op.invoked_us / 1_000_000) as usize;
        if second < seconds {
            if op.ended == Ended::Ok {
                ok[second] += 1;
            } else {
                not_ok[second] += 1;
            }
        }
    }
    let peak = ok.iter().chain(&not_ok).copied().max().unwrap_or(1).max(1) as f64;
    let height = THROUGHPUT_HEIGHT;
    let y = |count: usize| height - count as f64 / peak * (height - 10.0);
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg width="{WIDTH}" height="{:.0}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif">"##,
        height + 20.0
    );
    fault_shading(&mut out, axis, faults, height, false);
    for (series, color) in [(&ok, "#2a7"), (&not_ok, "#d22")] {
        let points: Vec<String> = series
            .iter()
            .enumerate()
            .map(|(s, &count)| format!("{:.1},{:.1}", axis.x(s as f64 * 1000.0 + 500.0), y(count)))
            .collect();
        let _ = write!(
            out,
            r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5"/>"##,
            points.join(" ")
        );
    }
    let _ = write!(
        out,
        r##"<text x="{}" y="12" font-size="10" text-anchor="end">{} ops/s</text>"##,
        MARGIN_LEFT - 4.0,
        peak as usize
    );
    time_ticks(&mut out, axis, height);
    out.push_str("</svg>");
    out
}

fn checks_table(json: &Value) -> String {
    let mut out = String::from("<table><tr><th>check</th><th>valid</th><th>detail</th></tr>");
    if let Some(checks) = json["checks"].as_object() {
        for (name, detail) in checks {
            let valid = detail["valid"].as_bool().unwrap_or(false);
            let mut shown = detail.clone();
            if let Some(map) = shown.as_object_mut() {
                map.remove("valid");
                // Per-watcher details are long: the JSON verdict has them.
                if let Some(watchers) = map.get_mut("watchers") {
                    *watchers = Value::from(format!(
                        "{} watchers (see the JSON verdict)",
                        watchers.as_array().map_or(0, |w| w.len())
                    ));
                }
            }
            let _ = write!(
                out,
                r#"<tr><td>{}</td><td class="{}">{}</td><td><code>{}</code></td></tr>"#,
                escape(name),
                if valid { "pass" } else { "fail" },
                if valid { "yes" } else { "NO" },
                escape(&shown.to_string())
            );
        }
    }
    out.push_str("</table>");
    out
}

fn availability_table(json: &Value) -> String {
    let mut out = String::from(
        "<table><tr><th>fault</th><th>what</th><th>window</th><th>ops</th>\
         <th>availability</th><th>writes</th><th>cut off</th><th>writes acknowledged there</th></tr>",
    );
    for window in json["availability"].as_array().into_iter().flatten() {
        let percent = |v: &Value| {
            v.as_f64()
                .map(|f| format!("{:.0}%", f * 100.0))
                .unwrap_or_else(|| "–".into())
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{:.1}–{:.1} s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(window["fault"].as_str().unwrap_or("")),
            escape(window["what"].as_str().unwrap_or("")),
            window["start_ms"].as_f64().unwrap_or(0.0) / 1000.0,
            window["end_ms"].as_f64().unwrap_or(0.0) / 1000.0,
            window["ops"],
            percent(&window["availability"]),
            percent(&window["write_availability"]),
            window["cut_off"],
            window["cut_off_writes_ok"],
        );
    }
    out.push_str("</table>");
    out
}

/// The report page for `verdict`.
pub fn html_report(verdict: &Verdict) -> String {
    let json = &verdict.json;
    let end_ms = verdict
        .timeline
        .iter()
        .map(|op| op.completed_us.unwrap_or(op.invoked_us) / 1000)
        .chain(verdict.faults.iter().map(|f| f.end_ms))
        .max()
        .unwrap_or(1000)
        .max(1000) as f64;
    let axis = Axis { end_ms };
    let title = format!(
        "ostrakon chaos: {} ({} nodes, {})",
        json["nemesis"].as_str().unwrap_or(""),
        json["nodes"],
        json["network"].as_str().unwrap_or("")
    );
    let mut page = String::new();
    let _ = write!(
        page,
        r#"<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }}
td code {{ font-size: 11px; word-break: break-all; }}
.pass {{ color: #1a6; font-weight: bold; }} .fail {{ color: #c22; font-weight: bold; }}
.legend span {{ margin-right: 1.5em; }}
</style></head><body><h1>{title}</h1>"#,
        title = escape(&title)
    );
    let _ = write!(
        page,
        r#"<p>Verdict: <span class="{}">{}</span> · {} operations: {} ok, {} failed, {} unknown · acknowledged writes lost: {}</p>"#,
        if verdict.valid { "pass" } else { "fail" },
        if verdict.valid { "VALID" } else { "INVALID" },
        json["ops"],
        json["ok"],
        json["failed"],
        json["unknown"],
        json["lost"],
    );
    page.push_str("<h2>Latency of every operation</h2>");
    page.push_str(r##"<p class="legend"><span style="color:#2a7">● ok</span><span style="color:#e80">● failed</span><span style="color:#d22">● unknown (drawn at the top)</span><span style="background:#f4b6b6">&nbsp;fault window&nbsp;</span></p>"##);
    page.push_str(&latency_plot(&verdict.timeline, &verdict.faults, &axis));
    page.push_str("<h2>Throughput per second</h2>");
    page.push_str(r##"<p class="legend"><span style="color:#2a7">— ok</span><span style="color:#d22">— failed or unknown</span></p>"##);
    page.push_str(&throughput_plot(&verdict.timeline, &verdict.faults, &axis));
    page.push_str("<h2>Checks</h2>");
    page.push_str(&checks_table(json));
    page.push_str("<h2>Availability during each fault</h2>");
    page.push_str(&availability_table(json));
    page.push_str("</body></html>\n");
    page
}
