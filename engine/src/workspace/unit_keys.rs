//! Objects named by unit, `FOLDER/uNNNNNN.json` (commit records, leases): their keys, and the
//! listing of a range of them.

use std::collections::{BTreeMap, BTreeSet};

use super::store::{Listed, Store};
use crate::error::Result;

/// The key of unit `unit`'s object in `folder`.
pub(super) fn unit_key(folder: &str, unit: usize) -> String {
    format!("{folder}/u{unit:06}.json")
}

/// The unit a key names, if it is one of these objects.
pub(super) fn unit_of(key: &str) -> Option<usize> {
    key.rsplit('/').next()?.strip_prefix('u')?.strip_suffix(".json")?.parse().ok()
}

/// The objects in `folder` of the units in `units`, without a request per unit: where a
/// listing starts at a key, one listing per run of nearby units (a page per thousand units),
/// else one listing of the folder.
pub(super) fn listed_units(store: &dyn Store, folder: &str, units: &BTreeSet<usize>) -> Result<BTreeMap<usize, Listed>> {
    let wanted = |l: Listed| unit_of(&l.key).filter(|u| units.contains(u)).map(|u| (u, l));
    let Some(&last) = units.last() else { return Ok(BTreeMap::new()) };
    // Six-digit keys sort as their units only below a million.
    if !store.lists_by_range() || last >= 1_000_000 {
        return Ok(store.list(folder)?.into_iter().filter_map(wanted).collect());
    }
    let mut out = BTreeMap::new();
    for (first, last) in runs(units) {
        let after = if first == 0 { folder.to_string() } else { unit_key(folder, first - 1) };
        out.extend(store.list_range(folder, &after, &unit_key(folder, last))?.into_iter().filter_map(wanted));
    }
    Ok(out)
}

/// A listing page's worth of units: farther apart, two units are listed by two listings.
const PAGE: usize = 1000;

/// `units` (sorted) cut into runs, first and last, wherever two neighbours are a page or more
/// apart: listing each run costs no more pages than listing across the gaps, and units put
/// aside all over a node cost a page each, not a listing of everything between them.
fn runs(units: &BTreeSet<usize>) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &unit in units {
        match runs.last_mut() {
            Some((_, last)) if unit - *last < PAGE => *last = unit,
            _ => runs.push((unit, unit)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::store::{LocalStore, ObjectBackend};

    fn range(store: &dyn Store) {
        for unit in [0, 1, 5, 9, 10, 11] {
            store.put(&unit_key("c", unit), b"{}").unwrap();
        }
        store.put("c/other.json", b"{}").unwrap();
        store.put("d/u000007.json", b"{}").unwrap();
        let listed =
            |wanted: &[usize]| listed_units(store, "c", &wanted.iter().copied().collect()).unwrap().into_keys().collect::<Vec<_>>();
        assert_eq!(listed(&[0, 5, 6, 10]), vec![0, 5, 10]);
        assert_eq!(listed(&[1, 9]), vec![1, 9]);
        assert_eq!(listed(&[6, 7, 8]), Vec::<usize>::new());
        assert_eq!(listed(&[11]), vec![11]);
    }

    #[test]
    fn a_range_of_units_is_listed_without_its_neighbours_in_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        range(&LocalStore::new(dir.path().to_path_buf()));
        assert_eq!(unit_of("x/y/u000042.json"), Some(42));
        assert_eq!(unit_of("x/y/manifest.json"), None);
    }

    #[test]
    fn units_far_apart_are_listed_in_runs() {
        let units: BTreeSet<usize> = [0, 5, 999, 2000, 2500, 9000].into_iter().collect();
        assert_eq!(runs(&units), [(0, 999), (2000, 2500), (9000, 9000)]);
        let store = ObjectBackend::open("memory://unit-runs/ws").unwrap();
        for unit in [5, 1500, 2500, 9000] {
            store.put(&unit_key("c", unit), b"{}").unwrap();
        }
        let listed = listed_units(&store, "c", &units).unwrap();
        assert_eq!(listed.into_keys().collect::<Vec<_>>(), [5, 2500, 9000], "1500 lies between runs and is not wanted");
    }

    #[test]
    fn a_range_of_units_is_listed_without_its_neighbours_in_object_storage() {
        range(&ObjectBackend::open("memory://unit-keys/ws").unwrap());
    }
}
