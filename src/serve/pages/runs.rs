//! The run history, and one run's per-node durations as a bar chart.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response;
use serde::Deserialize;

use crate::serve::App;
use crate::serve::html::{Fixed, Html, Url, html, page as frame};
use crate::serve::http::HttpError;
use crate::workspace::RunRecord;

#[derive(Debug, Default, Deserialize)]
pub struct RunsParams {
    /// The run whose durations are drawn (default: the latest).
    pub run: Option<String>,
}

/// `GET /runs`.
pub async fn page(State(app): State<Arc<App>>, Query(params): Query<RunsParams>) -> Result<response::Html<String>, HttpError> {
    let ws = app.workspace()?;
    let (list, live) = tokio::task::spawn_blocking(move || ws.runs().map(|l| (l, ws.run_is_live()))).await??;
    let mut body = Html::new();
    html!(&mut body; "<h1>runs</h1>");
    let chosen = match &params.run {
        Some(id) => Some(list.records.iter().find(|r| &r.id == id).ok_or_else(|| HttpError::not_found(format!("no run `{id}`")))?),
        None => list.records.last(),
    };
    if let Some(run) = chosen {
        chart(&mut body, run);
    }
    html!(&mut body;
        "<table class=\"grid\"><thead><tr><th>run</th><th>status</th><th>started</th><th>computed</th><th>cached</th><th>failed</th>\
         <th>seconds</th><th>worker</th><th>dag</th></tr></thead><tbody>"
    );
    for r in list.records.iter().rev() {
        let count = |s: &str| r.nodes.iter().filter(|n| n.status == s).count();
        let seconds: f64 = r.nodes.iter().map(|n| n.seconds).sum();
        // A record still `running` while nothing holds the workspace is a killed run's.
        let status = if r.status == "running" && !live { "killed" } else { r.status.as_str() };
        html!(&mut body;
            "<tr><td><a href=\"/runs?run=" {Url(&r.id)} "\">" {r.id} "</a></td><td class=\"state " {status} "\">" {status} "</td><td>"
            {r.started_at.get(..19).unwrap_or(&r.started_at)} "</td><td>" {count("computed") + count("resumed")} "</td><td>"
            {count("cached")} "</td><td>" {count("failed")} "</td><td>" {Fixed(seconds, 1)} "</td><td>" {r.worker.as_deref()}
            "</td><td>" {r.dag_path} "</td></tr>"
        );
    }
    html!(&mut body; "</tbody></table>");
    for (path, why) in &list.damaged {
        html!(&mut body; "<p class=\"error\">damaged run record " {path.display().to_string()} ": " {why} "</p>");
    }
    Ok(response::Html(frame("runs", &body)))
}

/// A horizontal bar per node: its seconds in the run, coloured by status.
fn chart(body: &mut Html, run: &RunRecord) {
    let longest = run.nodes.iter().map(|n| n.seconds).fold(0.0_f64, f64::max).max(1e-3);
    let (label_w, bar_w, row_h) = (180.0, 520.0, 22.0);
    let height = row_h * run.nodes.len() as f64 + 10.0;
    let width = label_w + bar_w + 90.0;
    html!(body;
        "<h2>run " {run.id} " · " {run.status} "</h2><svg class=\"chart\" role=\"img\" aria-label=\"seconds per node\" width=\""
        {width} "\" height=\"" {height} "\" viewBox=\"0 0 " {width} " " {height} "\">"
    );
    for (i, n) in run.nodes.iter().enumerate() {
        let y = i as f64 * row_h + 5.0;
        let w = (n.seconds / longest * bar_w).max(1.0);
        html!(body;
            "<text x=\"" {label_w - 6.0} "\" y=\"" {y + 14.0} "\" text-anchor=\"end\">" {n.name} "</text><rect class=\"bar " {n.status}
            "\" x=\"" {label_w} "\" y=\"" {y} "\" width=\"" {Fixed(w, 1)} "\" height=\"" {row_h - 6.0} "\"><title>" {n.name} ": "
            {Fixed(n.seconds, 2)} " s, " {n.status} "</title></rect><text x=\"" {label_w + w + 6.0} "\" y=\"" {y + 14.0} "\">"
            {Fixed(n.seconds, 2)} " s</text>"
        );
    }
    html!(body; "</svg>");
}
