//! Threshold calibration for a numeric column of a node against the reviewers' labels:
//! precision and recall of `column >= t` as `t` moves, the rows labelled on a strip beneath, and
//! the threshold that agrees with the most labels.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Html;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Float64Type;
use serde::Deserialize;

use super::{ident, literal, read_rows, require_node};
use crate::catalog::LABELS;
use crate::serve::App;
use crate::serve::calibration::{Calibration, Point, calibrate};
use crate::serve::html::{escape, page as frame, url_part};
use crate::serve::http::HttpError;

#[derive(Debug, Default, Deserialize)]
pub struct CalibrateParams {
    /// The score column (default: the first of `dino_mean`, `vlm_score`, or any number).
    pub column: Option<String>,
}

/// Columns tried first when none is named.
const PREFERRED: [&str; 4] = ["dino_mean", "vlm_score", "ref2_similarity", "dino_cls"];

/// The most labels read for one plot.
const MAX_LABELS: usize = 1_000_000;

/// `GET /node/NAME/calibrate?column=COLUMN`.
pub async fn page(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(params): Query<CalibrateParams>,
) -> Result<Html<String>, HttpError> {
    let catalog = app.catalog().await?;
    require_node(&catalog, &name)?;
    let ctx = catalog.session_for(&format!("SELECT * FROM {}", ident(&name))).await?;
    let schema = ctx.table(datafusion::common::TableReference::bare(name.as_str())).await?.schema().as_arrow().clone();
    let numeric: Vec<String> =
        schema.fields().iter().filter(|f| f.data_type().is_numeric() && f.name() != "seed").map(|f| f.name().clone()).collect();
    let column = match params.column {
        Some(c) if numeric.contains(&c) => c,
        Some(c) => {
            return Err(HttpError::bad_request(format!(
                "`{c}` is not a numeric column of `{name}`; numeric columns: {}",
                numeric.join(", ")
            )));
        }
        None => {
            match PREFERRED.iter().find(|p| numeric.iter().any(|n| n == *p)).map(|s| s.to_string()).or_else(|| numeric.first().cloned()) {
                Some(c) => c,
                None => return Err(HttpError::bad_request(format!("`{name}` has no numeric column to calibrate"))),
            }
        }
    };
    let sql = format!(
        "SELECT CAST(t.{} AS DOUBLE) AS score, l.label = 'accept' AS accepted FROM {} t JOIN {LABELS} l ON t.row_id = l.row_id \
         WHERE l.node = {} AND l.label IN ('accept', 'reject') AND t.{} IS NOT NULL",
        ident(&column),
        ident(&name),
        literal(&name),
        ident(&column)
    );
    let batches = read_rows(&catalog, &sql, MAX_LABELS).await?;
    let mut labelled = Vec::new();
    for batch in &batches {
        let scores = batch.column(0).as_primitive::<Float64Type>();
        let accepted = batch.column(1).as_boolean();
        labelled.extend((0..batch.num_rows()).map(|i| (scores.value(i), accepted.value(i))));
    }
    let result = calibrate(&labelled);

    let mut body = String::new();
    let _ = write!(body, "<h1>calibrate <a href=\"/node/{}\">{}</a></h1><p class=\"links\">score column: ", url_part(&name), escape(&name));
    for c in &numeric {
        let class = if *c == column { " class=\"current\"" } else { "" };
        let _ = write!(body, "<a{class} href=\"/node/{}/calibrate?column={}\">{}</a> ", url_part(&name), url_part(c), escape(c));
    }
    let _ = write!(body, "</p>");
    summary(&mut body, &result, &column);
    plot(&mut body, &result, &labelled);
    Ok(Html(frame(&format!("calibrate {name}"), &body)))
}

fn summary(body: &mut String, c: &Calibration, column: &str) {
    let total = c.accepted + c.rejected;
    let _ = write!(body, "<p id=\"calibration\" data-labels=\"{total}\" data-accepted=\"{}\" data-rejected=\"{}\"", c.accepted, c.rejected);
    match &c.best {
        Some(best) => {
            let _ = write!(
                body,
                " data-threshold=\"{}\">best threshold: <b>{column} &gt;= {}</b> keeps {} of {} accepted and {} of {} rejected rows \
                 (precision {:.2}, recall {:.2}; from {total} labels). As a query: <code>WHERE {} &gt;= {}</code></p>",
                best.threshold,
                best.threshold,
                best.kept_accepted,
                c.accepted,
                best.kept_rejected,
                c.rejected,
                best.precision,
                best.recall,
                escape(column),
                best.threshold
            );
        }
        None => {
            let _ = write!(
                body,
                ">{total} labels ({} accepted, {} rejected): label both accepted and rejected rows (keys <kbd>a</kbd> and <kbd>r</kbd> on the node's page) to find a threshold.</p>",
                c.accepted, c.rejected
            );
        }
    }
}

/// Precision (blue) and recall (orange) against the threshold, the labelled rows beneath
/// (accepted above the axis, rejected below), the best threshold as a line.
fn plot(body: &mut String, c: &Calibration, labelled: &[(f64, bool)]) {
    if c.points.is_empty() {
        return;
    }
    let (w, h, left, top) = (640.0, 240.0, 50.0, 10.0);
    let lo = c.points.first().map_or(0.0, |p| p.threshold);
    let hi = c.points.last().map_or(1.0, |p| p.threshold);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let x = |t: f64| left + (t - lo) / span * w;
    let y = |v: f64| top + (1.0 - v) * h;
    // Steps: the filter keeps the same rows until the threshold passes the next score.
    let line = |f: &dyn Fn(&Point) -> f64| {
        let mut points = Vec::new();
        for (i, p) in c.points.iter().enumerate() {
            if i > 0 {
                points.push(format!("{:.1},{:.1}", x(p.threshold), y(f(&c.points[i - 1]))));
            }
            points.push(format!("{:.1},{:.1}", x(p.threshold), y(f(p))));
        }
        points.join(" ")
    };
    let total_h = top + h + 60.0;
    let _ = write!(
        body,
        "<svg class=\"calibration\" role=\"img\" aria-label=\"precision and recall against the threshold\" width=\"{}\" height=\"{total_h}\" viewBox=\"0 0 {} {total_h}\">",
        w + left + 20.0,
        w + left + 20.0
    );
    let _ = write!(body, "<rect class=\"frame\" x=\"{left}\" y=\"{top}\" width=\"{w}\" height=\"{h}\"/>");
    for v in [0.0, 0.5, 1.0] {
        let _ = write!(body, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v}</text>", left - 4.0, y(v) + 4.0);
    }
    let _ = write!(body, "<polyline class=\"precision\" points=\"{}\"/>", line(&|p| p.precision));
    let _ = write!(body, "<polyline class=\"recall\" points=\"{}\"/>", line(&|p| p.recall));
    if let Some(best) = &c.best {
        let bx = x(best.threshold);
        let _ = write!(body, "<line class=\"best\" x1=\"{bx}\" x2=\"{bx}\" y1=\"{top}\" y2=\"{}\"/>", top + h + 40.0);
    }
    let strip = top + h + 20.0;
    for (score, accepted) in labelled {
        let (class, dy) = if *accepted { ("accepted", -6.0) } else { ("rejected", 6.0) };
        let _ = write!(body, "<circle class=\"{class}\" cx=\"{:.1}\" cy=\"{}\" r=\"3\"/>", x(*score), strip + dy);
    }
    let _ = write!(
        body,
        "<text x=\"{left}\" y=\"{}\">{lo:.4}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{hi:.4}</text>\
         <text x=\"{}\" y=\"{}\" class=\"legend precision\">precision</text><text x=\"{}\" y=\"{}\" class=\"legend recall\">recall</text></svg>",
        total_h - 4.0,
        left + w,
        total_h - 4.0,
        left + 8.0,
        top + 16.0,
        left + 90.0,
        top + 16.0
    );
}
