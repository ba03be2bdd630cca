//! The DAG page: the graph as SVG and a table of nodes with their state (cached, stale,
//! missing, view, running), rows, failed rows, fingerprint and last run time. The page polls
//! `/api/dag` while it is open, so it follows a run as it commits.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response;
use serde::Serialize;

use super::bounded;
use crate::catalog::Catalog;
use crate::data::NodeData;
use crate::fingerprint::Components;
use crate::serve::App;
use crate::serve::html::{Fixed, Html, Url, html, page as frame};
use crate::serve::http::HttpError;

/// A node as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub name: String,
    pub op: String,
    /// `cached`, `stale`, `missing`, `view` or `running`.
    pub state: String,
    pub inputs: Vec<String>,
    pub rows: Option<u64>,
    pub error_rows: Option<u64>,
    pub fingerprint: String,
    /// Seconds the node took in the latest run that computed it, and when that run started.
    pub last_seconds: Option<f64>,
    pub last_run: Option<String>,
}

/// The whole page's data (also `GET /api/dag`).
#[derive(Debug, Clone, Serialize)]
pub struct DagView {
    pub name: String,
    pub workspace: String,
    /// A run (or workers) holds the workspace now.
    pub live: bool,
    pub nodes: Vec<NodeView>,
}

/// `GET /api/dag`.
pub async fn json(State(app): State<Arc<App>>) -> Result<Json<DagView>, HttpError> {
    Ok(Json(bounded(app.queries(), view(&app)).await?))
}

/// `GET /`.
pub async fn page(State(app): State<Arc<App>>) -> Result<response::Html<String>, HttpError> {
    let dag = bounded(app.queries(), view(&app)).await?;
    let mut body = Html::new();
    let live = if dag.live { "a run is at work" } else { "no run at work" };
    html!(&mut body;
        "<h1>" {dag.name} "</h1><p class=\"links\">workspace " {dag.workspace} " · <span id=\"live\" data-live=\"" {dag.live} "\">"
        {live} "</span></p>"
    );
    graph(&mut body, &dag.nodes);
    html!(&mut body;
        "<table class=\"grid nodes\"><thead><tr><th>node</th><th>op</th><th>state</th><th>rows</th><th>failed rows</th>\
         <th>fingerprint</th><th>last run</th></tr></thead><tbody>"
    );
    for n in &dag.nodes {
        html!(&mut body; "<tr><td>");
        if matches!(n.state.as_str(), "cached" | "view") {
            html!(&mut body; "<a href=\"/node/" {Url(&n.name)} "\">" {n.name} "</a>");
        } else {
            html!(&mut body; {n.name});
        }
        html!(&mut body; "</td><td>" {n.op} "</td><td class=\"state " {n.state} "\" data-state-of=\"" {n.name} "\">" {n.state}
            "</td><td data-rows-of=\"" {n.name} "\">" {n.rows} "</td><td>");
        match n.error_rows {
            Some(e) if e > 0 => html!(&mut body; "<a href=\"/node/" {Url(&n.name)} "/errors\">" {e} "</a>"),
            e => html!(&mut body; {e}),
        }
        html!(&mut body; "</td><td><code>" {n.fingerprint.get(..12).unwrap_or(&n.fingerprint)} "</code></td><td>");
        if let (Some(s), Some(at)) = (&n.last_seconds, &n.last_run) {
            html!(&mut body; {Fixed(*s, 2)} " s (" {at.get(..19).unwrap_or(at)} ")");
        }
        html!(&mut body; "</td></tr>");
    }
    html!(&mut body; "</tbody></table>");
    Ok(response::Html(frame(&dag.name, &body)))
}

/// The nodes with their states, from the DAG when one was given, else from the index.
async fn view(app: &App) -> Result<DagView, HttpError> {
    let catalog = app.catalog().await?;
    let dag = app.dag().await?;
    let ws = app.workspace()?;
    let workspace = ws.location().to_string();
    tokio::task::spawn_blocking(move || -> Result<DagView, HttpError> {
        let (name, mut nodes) = match &dag {
            Some(dag) => {
                let plan = crate::plan::plan(dag)?;
                let nodes: Vec<NodeView> = dag
                    .nodes
                    .iter()
                    .zip(&plan.nodes)
                    .map(|(node, p)| base(&node.name, node.op_name(), p.state.as_str(), dag.input_names(node), &p.fingerprint))
                    .collect();
                (dag.name.clone(), nodes)
            }
            None => {
                let index = ws.index()?;
                let nodes: Vec<NodeView> = index
                    .nodes
                    .iter()
                    .map(|(name, entry)| {
                        let components: Option<Components> = serde_json::from_value(entry.components.clone()).ok();
                        let op = components.as_ref().map(|c| c.op.clone()).unwrap_or_default();
                        let inputs: Vec<&str> =
                            components.as_ref().map(|c| c.inputs.iter().map(|i| i.name.as_str()).collect()).unwrap_or_default();
                        let state = match catalog.get(name).map(|l| &l.data) {
                            Some(NodeData::View(_)) => "view",
                            Some(NodeData::Table(_)) => "cached",
                            None => "missing",
                        };
                        let fp = components.as_ref().map(Components::fingerprint).unwrap_or_default();
                        base(name, &op, state, inputs, &fp)
                    })
                    .collect();
                ("workspace".to_string(), nodes)
            }
        };
        counts(&catalog, &mut nodes);
        let runs = ws.runs()?;
        for n in &mut nodes {
            let last = runs.records.iter().rev().find_map(|r| {
                r.nodes
                    .iter()
                    .find(|x| x.name == n.name && matches!(x.status.as_str(), "computed" | "resumed"))
                    .map(|x| (x.seconds, r.started_at.clone()))
            });
            (n.last_seconds, n.last_run) = last.map_or((None, None), |(s, at)| (Some(s), Some(at)));
        }
        let live = ws.run_is_live();
        if live {
            mark_running(&mut nodes);
        }
        Ok(DagView { name, workspace, live, nodes })
    })
    .await?
}

fn base(name: &str, op: &str, state: &str, inputs: Vec<&str>, fingerprint: &str) -> NodeView {
    NodeView {
        name: name.to_string(),
        op: op.to_string(),
        state: state.to_string(),
        inputs: inputs.into_iter().map(str::to_string).collect(),
        rows: None,
        error_rows: None,
        fingerprint: fingerprint.to_string(),
        last_seconds: None,
        last_run: None,
    }
}

/// Rows and failed rows of the nodes whose output is stored.
fn counts(catalog: &Catalog, nodes: &mut [NodeView]) {
    for n in nodes {
        if let Some(NodeData::Table(t)) = catalog.get(&n.name).map(|l| &l.data)
            && n.state == "cached"
        {
            n.rows = Some(t.manifest.rows);
            n.error_rows = Some(t.manifest.error_rows);
        }
    }
}

/// While a run is at work: the nodes it can be computing (not done, every input done).
fn mark_running(nodes: &mut [NodeView]) {
    let done: HashMap<String, bool> = nodes.iter().map(|n| (n.name.clone(), matches!(n.state.as_str(), "cached" | "view"))).collect();
    for n in nodes {
        if matches!(n.state.as_str(), "missing" | "stale") && n.inputs.iter().all(|i| done.get(i).copied().unwrap_or(true)) {
            n.state = "running".into();
        }
    }
}

/// The graph: a column per depth (longest path from a source), edges as curves.
fn graph(body: &mut Html, nodes: &[NodeView]) {
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
    let mut depth = vec![0usize; nodes.len()];
    // Nodes come in dependency order from a DAG; the index may not be, so iterate to a fixpoint.
    for _ in 0..nodes.len() {
        let mut changed = false;
        for (i, n) in nodes.iter().enumerate() {
            let d = n.inputs.iter().filter_map(|x| index.get(x.as_str())).map(|&j| depth[j] + 1).max().unwrap_or(0);
            if d > depth[i] {
                depth[i] = d;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let (w, h, gap_x, gap_y) = (150.0, 40.0, 60.0, 16.0);
    let mut slot = vec![0usize; nodes.len() + 1];
    let mut place = vec![(0.0, 0.0); nodes.len()];
    for (i, &d) in depth.iter().enumerate() {
        place[i] = (10.0 + d as f64 * (w + gap_x), 10.0 + slot[d] as f64 * (h + gap_y));
        slot[d] += 1;
    }
    let width = 20.0 + (depth.iter().max().copied().unwrap_or(0) + 1) as f64 * (w + gap_x);
    let height = 20.0 + slot.iter().max().copied().unwrap_or(1) as f64 * (h + gap_y);
    html!(body;
        "<svg class=\"dag\" role=\"img\" aria-label=\"the DAG\" width=\"" {width} "\" height=\"" {height} "\" viewBox=\"0 0 "
        {width} " " {height} "\">"
    );
    for (i, n) in nodes.iter().enumerate() {
        for input in &n.inputs {
            if let Some(&j) = index.get(input.as_str()) {
                let (x1, y1) = (place[j].0 + w, place[j].1 + h / 2.0);
                let (x2, y2) = (place[i].0, place[i].1 + h / 2.0);
                html!(body; "<path class=\"edge\" d=\"M" {x1} "," {y1} " C" {x1 + gap_x / 2.0} "," {y1} " " {x2 - gap_x / 2.0} ","
                    {y2} " " {x2} "," {y2} "\"/>");
            }
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        let (x, y) = place[i];
        html!(body;
            "<a href=\"/node/" {Url(&n.name)} "\"><g class=\"node state " {n.state} "\" data-state-of=\"" {n.name} "\"><rect x=\""
            {x} "\" y=\"" {y} "\" width=\"" {w} "\" height=\"" {h} "\" rx=\"6\"/><text x=\"" {x + 8.0} "\" y=\"" {y + 17.0}
            "\" class=\"name\">" {n.name} "</text><text x=\"" {x + 8.0} "\" y=\"" {y + 33.0} "\" class=\"sub\">" {n.op} " · "
            {n.state} "</text></g></a>"
        );
    }
    html!(body; "</svg>");
}
