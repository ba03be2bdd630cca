//! `unoflow model tiny`: the CLI side of the rehearsal kit (the folders themselves are written
//! by `unoflow_models::tiny`).

use std::io::Write;
use std::path::PathBuf;

use super::output::{self, STDOUT};
use super::{TinyKind, TinyLayout};
use crate::error::{Error, IoContext, Result};

/// Writes the folder and lists its files.
pub(super) async fn write(dir: PathBuf, kind: TinyKind, layout: Option<TinyLayout>, seed: u64) -> Result<i32> {
    use unoflow_models::tiny;
    let release = match kind {
        TinyKind::FluxDev => tiny::TinyKind::FluxDev,
        TinyKind::Dinov2 => tiny::TinyKind::Dinov2,
        TinyKind::Dino => tiny::TinyKind::Dino,
        TinyKind::Clip => tiny::TinyKind::Clip,
    };
    let layout = match (release, layout) {
        (tiny::TinyKind::FluxDev, None | Some(TinyLayout::Bfl)) => tiny::FluxLayout::Bfl,
        (tiny::TinyKind::FluxDev, Some(TinyLayout::Diffusers)) => tiny::FluxLayout::Diffusers,
        (_, None) => tiny::FluxLayout::Bfl,
        (_, Some(_)) => return Err(Error::Usage("--layout applies to --kind flux-dev only (the other releases have one layout)".into())),
    };
    let target = dir.clone();
    let files = tokio::task::spawn_blocking(move || tiny::write(&target, release, layout, seed))
        .await
        .map_err(|e| Error::Internal(format!("model tiny panicked: {e}")))?
        .map_err(|e| Error::Usage(e.to_string()))?;
    let mut out = output::stdout();
    for file in &files {
        writeln!(out, "{}", file.display()).at(STDOUT)?;
    }
    writeln!(out, "wrote {} files under {}", files.len(), dir.display()).at(STDOUT)?;
    Ok(0)
}
