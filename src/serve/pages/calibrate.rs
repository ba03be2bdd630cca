//! Threshold calibration for a numeric column of a node against the reviewers' labels:
//! precision and recall of `column >= t` as `t` moves, the rows labelled on a strip beneath, and
//! the threshold that agrees with the most labels.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Float64Type;
use serde::Deserialize;

use super::{bounded, ident, literal, read_rows, require_node};
use crate::catalog::LABELS;
use crate::serve::App;
use crate::serve::calibration::{Calibration, Point, calibrate};
use crate::serve::html::{Fixed, Html, Url, html, page as frame};
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
) -> Result<response::Html<String>, HttpError> {
    let catalog = app.catalog().await?;
    require_node(&catalog, &name)?;
    // Registering the table checks its parts' digests: work a request starts, so bounded too.
    let schema = bounded(app.queries(), async {
        let ctx = catalog.bounded_session_for(&format!("SELECT * FROM {}", ident(&name)), app.queries().memory).await?;
        Ok(ctx.table(datafusion::common::TableReference::bare(name.as_str())).await?.schema().as_arrow().clone())
    })
    .await?;
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
    let batches = read_rows(app.queries(), &catalog, &sql, MAX_LABELS).await?;
    let mut labelled = Vec::new();
    for batch in &batches {
        let scores = batch.column(0).as_primitive::<Float64Type>();
        let accepted = batch.column(1).as_boolean();
        labelled.extend((0..batch.num_rows()).map(|i| (scores.value(i), accepted.value(i))));
    }
    let result = calibrate(&labelled);

    let mut body = Html::new();
    html!(&mut body; "<h1>calibrate <a href=\"/node/" {Url(&name)} "\">" {name} "</a></h1><p class=\"links\">score column: ");
    for c in &numeric {
        let class = if *c == column { " class=\"current\"" } else { "" };
        html!(&mut body; "<a" {class} " href=\"/node/" {Url(&name)} "/calibrate?column=" {Url(c)} "\">" {c} "</a> ");
    }
    html!(&mut body; "</p>");
    summary(&mut body, &result, &column);
    plot(&mut body, &result, &labelled);
    Ok(response::Html(frame(&format!("calibrate {name}"), &body)))
}

fn summary(body: &mut Html, c: &Calibration, column: &str) {
    let total = c.accepted + c.rejected;
    html!(body; "<p id=\"calibration\" data-labels=\"" {total} "\" data-accepted=\"" {c.accepted} "\" data-rejected=\"" {c.rejected} "\"");
    match &c.best {
        Some(best) => html!(body;
            " data-threshold=\"" {best.threshold} "\">best threshold: <b>" {column} " &gt;= " {best.threshold} "</b> keeps "
            {best.kept_accepted} " of " {c.accepted} " accepted and " {best.kept_rejected} " of " {c.rejected}
            " rejected rows (precision " {Fixed(best.precision, 2)} ", recall " {Fixed(best.recall, 2)} "; from " {total}
            " labels). As a query: <code>WHERE " {column} " &gt;= " {best.threshold} "</code></p>"
        ),
        None => html!(body;
            ">" {total} " labels (" {c.accepted} " accepted, " {c.rejected} " rejected): label both accepted and rejected rows \
             (keys <kbd>a</kbd> and <kbd>r</kbd> on the node's page) to find a threshold.</p>"
        ),
    }
}

/// Precision (blue) and recall (orange) against the threshold, the labelled rows beneath
/// (accepted above the axis, rejected below), the best threshold as a line.
fn plot(body: &mut Html, c: &Calibration, labelled: &[(f64, bool)]) {
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
    let total_w = w + left + 20.0;
    html!(body;
        "<svg class=\"calibration\" role=\"img\" aria-label=\"precision and recall against the threshold\" width=\"" {total_w}
        "\" height=\"" {total_h} "\" viewBox=\"0 0 " {total_w} " " {total_h} "\">"
        "<rect class=\"frame\" x=\"" {left} "\" y=\"" {top} "\" width=\"" {w} "\" height=\"" {h} "\"/>"
    );
    for v in [0.0, 0.5, 1.0] {
        html!(body; "<text x=\"" {left - 4.0} "\" y=\"" {y(v) + 4.0} "\" text-anchor=\"end\">" {v} "</text>");
    }
    html!(body;
        "<polyline class=\"precision\" points=\"" {line(&|p| p.precision)} "\"/>"
        "<polyline class=\"recall\" points=\"" {line(&|p| p.recall)} "\"/>"
    );
    if let Some(best) = &c.best {
        let bx = x(best.threshold);
        html!(body; "<line class=\"best\" x1=\"" {bx} "\" x2=\"" {bx} "\" y1=\"" {top} "\" y2=\"" {top + h + 40.0} "\"/>");
    }
    let strip = top + h + 20.0;
    for (score, accepted) in labelled {
        let (class, dy) = if *accepted { ("accepted", -6.0) } else { ("rejected", 6.0) };
        html!(body; "<circle class=\"" {class} "\" cx=\"" {Fixed(x(*score), 1)} "\" cy=\"" {strip + dy} "\" r=\"3\"/>");
    }
    html!(body;
        "<text x=\"" {left} "\" y=\"" {total_h - 4.0} "\">" {Fixed(lo, 4)} "</text><text x=\"" {left + w} "\" y=\"" {total_h - 4.0}
        "\" text-anchor=\"end\">" {Fixed(hi, 4)} "</text><text x=\"" {left + 8.0} "\" y=\"" {top + 16.0}
        "\" class=\"legend precision\">precision</text><text x=\"" {left + 90.0} "\" y=\"" {top + 16.0}
        "\" class=\"legend recall\">recall</text></svg>"
    );
}
