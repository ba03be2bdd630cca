//! The run history, and one run's per-node durations as a bar chart.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Html;
use serde::Deserialize;

use crate::serve::App;
use crate::serve::html::{escape, page as frame, url_part};
use crate::serve::http::HttpError;
use crate::workspace::RunRecord;

#[derive(Debug, Default, Deserialize)]
pub struct RunsParams {
    /// The run whose durations are drawn (default: the latest).
    pub run: Option<String>,
}

/// `GET /runs`.
pub async fn page(State(app): State<Arc<App>>, Query(params): Query<RunsParams>) -> Result<Html<String>, HttpError> {
    let ws = app.workspace()?;
    let (list, live) = tokio::task::spawn_blocking(move || ws.runs().map(|l| (l, ws.run_is_live()))).await??;
    let mut body = String::from("<h1>runs</h1>");
    let chosen = match &params.run {
        Some(id) => Some(list.records.iter().find(|r| &r.id == id).ok_or_else(|| HttpError::not_found(format!("no run `{id}`")))?),
        None => list.records.last(),
    };
    if let Some(run) = chosen {
        chart(&mut body, run);
    }
    let _ = write!(
        body,
        "<table class=\"grid\"><thead><tr><th>run</th><th>status</th><th>started</th><th>computed</th><th>cached</th><th>failed</th><th>seconds</th><th>worker</th><th>dag</th></tr></thead><tbody>"
    );
    for r in list.records.iter().rev() {
        let count = |s: &str| r.nodes.iter().filter(|n| n.status == s).count();
        let seconds: f64 = r.nodes.iter().map(|n| n.seconds).sum();
        // A record still `running` while nothing holds the workspace is a killed run's.
        let status = if r.status == "running" && !live { "killed" } else { r.status.as_str() };
        let _ = write!(
            body,
            "<tr><td><a href=\"/runs?run={}\">{}</a></td><td class=\"state {}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{seconds:.1}</td><td>{}</td><td>{}</td></tr>",
            url_part(&r.id),
            escape(&r.id),
            escape(status),
            escape(status),
            escape(r.started_at.get(..19).unwrap_or(&r.started_at)),
            count("computed") + count("resumed"),
            count("cached"),
            count("failed"),
            escape(r.worker.as_deref().unwrap_or("")),
            escape(&r.dag_path)
        );
    }
    let _ = write!(body, "</tbody></table>");
    for (path, why) in &list.damaged {
        let _ = write!(body, "<p class=\"error\">damaged run record {}: {}</p>", escape(&path.display().to_string()), escape(why));
    }
    Ok(Html(frame("runs", &body)))
}

/// A horizontal bar per node: its seconds in the run, coloured by status.
fn chart(body: &mut String, run: &RunRecord) {
    let longest = run.nodes.iter().map(|n| n.seconds).fold(0.0_f64, f64::max).max(1e-3);
    let (label_w, bar_w, row_h) = (180.0, 520.0, 22.0);
    let height = row_h * run.nodes.len() as f64 + 10.0;
    let _ = write!(
        body,
        "<h2>run {} · {}</h2><svg class=\"chart\" role=\"img\" aria-label=\"seconds per node\" width=\"{}\" height=\"{height}\" viewBox=\"0 0 {} {height}\">",
        escape(&run.id),
        escape(&run.status),
        label_w + bar_w + 90.0,
        label_w + bar_w + 90.0
    );
    for (i, n) in run.nodes.iter().enumerate() {
        let y = i as f64 * row_h + 5.0;
        let w = (n.seconds / longest * bar_w).max(1.0);
        let _ = write!(
            body,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><rect class=\"bar {}\" x=\"{label_w}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\"><title>{}: {:.2} s, {}</title></rect><text x=\"{}\" y=\"{}\">{:.2} s</text>",
            label_w - 6.0,
            y + 14.0,
            escape(&n.name),
            escape(&n.status),
            row_h - 6.0,
            escape(&n.name),
            n.seconds,
            escape(&n.status),
            label_w + w + 6.0,
            y + 14.0,
            n.seconds
        );
    }
    let _ = write!(body, "</svg>");
}
