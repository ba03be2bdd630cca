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

/// The objects in `folder` of the units in `units`: one listing from the first to the last (a
/// page per thousand units on object storage), not a request per unit.
pub(super) fn listed_units(store: &dyn Store, folder: &str, units: &BTreeSet<usize>) -> Result<BTreeMap<usize, Listed>> {
    let (Some(&first), Some(&last)) = (units.first(), units.last()) else { return Ok(BTreeMap::new()) };
    // Six-digit keys sort as their units only below a million.
    let listed = if last < 1_000_000 {
        let after = if first == 0 { folder.to_string() } else { unit_key(folder, first - 1) };
        store.list_range(folder, &after, &unit_key(folder, last))?
    } else {
        store.list(folder)?
    };
    Ok(listed.into_iter().filter_map(|l| unit_of(&l.key).filter(|u| units.contains(u)).map(|u| (u, l))).collect())
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
    fn a_range_of_units_is_listed_without_its_neighbours_in_object_storage() {
        range(&ObjectBackend::open("memory://unit-keys/ws").unwrap());
    }
}
