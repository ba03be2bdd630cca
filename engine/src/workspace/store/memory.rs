//! An in-memory bucket (`memory://NAME/prefix`, for simulations and tests) whose listings start
//! at a key and come a page at a time, as S3's `ListObjectsV2` with `start-after` does.
//!
//! object_store's `InMemory` answers a listing from a key by copying out every object under the
//! prefix and filtering them: a window of a thousand commit records among 100,000 cost a copy
//! of all of them, so a simulation of many workers measured that copy rather than the protocol.
//! Here objects still live in an `InMemory` (its conditional puts, ranges and uploads), and a
//! sorted index of their metadata beside it answers the listings. Writes go one at a time (as
//! `InMemory`'s do), each recording the object's metadata as the store reports it after the
//! write: a listing begun after a write returned shows it, as S3's do.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, Result, UploadPart,
};

/// How many objects a listing returns at once (S3's page).
const PAGE: usize = 1000;

/// The first page's size: a listing from a key often wants a few keys only, and copying out a
/// thousand for it made simulations measure the copies.
const FIRST_PAGE: usize = 64;

/// An in-memory bucket that lists from a key.
#[derive(Debug, Default)]
pub struct MemoryBucket {
    objects: Arc<InMemory>,
    index: Arc<Index>,
}

/// The metadata of every object, sorted by key, and the lock that makes writes one at a time
/// so the index follows the store in the order the store changed.
#[derive(Debug, Default)]
struct Index {
    writes: tokio::sync::Mutex<()>,
    listed: RwLock<BTreeMap<Path, ObjectMeta>>,
}

impl Index {
    /// Records what the store holds at `location` now. Called with `writes` held.
    async fn follow(&self, objects: &InMemory, location: &Path) -> Result<()> {
        let now = match objects.head(location).await {
            Ok(meta) => Some(meta),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let mut listed = self.listed.write().unwrap_or_else(PoisonError::into_inner);
        match now {
            Some(meta) => listed.insert(location.clone(), meta),
            None => listed.remove(location),
        };
        Ok(())
    }

    /// Up to a page of the objects under `prefix` after `cursor`, and whether more may follow.
    fn page(&self, prefix: &Path, cursor: Bound<Path>, size: usize) -> (Vec<ObjectMeta>, bool) {
        let listed = self.listed.read().unwrap_or_else(PoisonError::into_inner);
        let page: Vec<ObjectMeta> = listed
            .range((cursor, Bound::Unbounded))
            // Keys under a prefix are the keys that start with it, which sort together.
            .take_while(|(key, _)| key.as_ref().starts_with(prefix.as_ref()))
            .filter(|(key, _)| is_under(key, prefix))
            .take(size)
            .map(|(_, meta)| meta.clone())
            .collect();
        let more = page.len() == size;
        (page, more)
    }
}

/// Whether `key` is below `prefix` by whole segments (`a/b` is under `a`, `ab/c` is not; a key
/// is not under itself), as object_store's listings mean it.
fn is_under(key: &Path, prefix: &Path) -> bool {
    key.prefix_match(prefix).is_some_and(|mut rest| rest.next().is_some())
}

impl MemoryBucket {
    /// The objects under `prefix` after `offset`, a page at a time, without reading further
    /// than the caller does.
    fn listing(&self, prefix: Option<&Path>, offset: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let prefix = prefix.cloned().unwrap_or_default();
        let start = match offset {
            Some(offset) if offset.as_ref() >= prefix.as_ref() => Bound::Excluded(offset.clone()),
            _ => Bound::Included(prefix.clone()),
        };
        let index = Arc::clone(&self.index);
        stream::unfold((Some(start), FIRST_PAGE), move |(cursor, size)| {
            let page = cursor.map(|cursor| index.page(&prefix, cursor, size));
            async move {
                let (page, more) = page?;
                let next = more.then(|| page.last().map(|meta| Bound::Excluded(meta.location.clone()))).flatten();
                Some((stream::iter(page.into_iter().map(Ok)), (next, PAGE)))
            }
        })
        .flatten()
        .boxed()
    }
}

impl fmt::Display for MemoryBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemoryBucket")
    }
}

#[async_trait]
impl ObjectStore for MemoryBucket {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let _write = self.index.writes.lock().await;
        let put = self.objects.put_opts(location, payload, opts).await?;
        self.index.follow(&self.objects, location).await?;
        Ok(put)
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        let upload = self.objects.put_multipart_opts(location, opts).await?;
        Ok(Box::new(Upload { upload, location: location.clone(), objects: Arc::clone(&self.objects), index: Arc::clone(&self.index) }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.objects.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[std::ops::Range<u64>]) -> Result<Vec<bytes::Bytes>> {
        self.objects.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        let (objects, index) = (Arc::clone(&self.objects), Arc::clone(&self.index));
        locations
            .and_then(move |location| {
                let (objects, index) = (Arc::clone(&objects), Arc::clone(&index));
                async move {
                    let _write = index.writes.lock().await;
                    objects.delete(&location).await?;
                    index.follow(&objects, &location).await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.listing(prefix, None)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        self.listing(prefix, Some(offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let prefix = prefix.cloned().unwrap_or_default();
        let depth = prefix.parts().count();
        let all: Vec<ObjectMeta> = self.listing(Some(&prefix), None).try_collect().await?;
        let mut out = ListResult { common_prefixes: Vec::new(), objects: Vec::new() };
        for meta in all {
            let parts: Vec<_> = meta.location.parts().collect();
            if parts.len() == depth + 1 {
                out.objects.push(meta);
            } else {
                let common = Path::from_iter(parts.into_iter().take(depth + 1));
                if out.common_prefixes.last() != Some(&common) {
                    out.common_prefixes.push(common);
                }
            }
        }
        Ok(out)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let _write = self.index.writes.lock().await;
        self.objects.copy_opts(from, to, options).await?;
        self.index.follow(&self.objects, to).await
    }
}

/// A multipart upload that enters the index when it completes.
#[derive(Debug)]
struct Upload {
    upload: Box<dyn MultipartUpload>,
    location: Path,
    objects: Arc<InMemory>,
    index: Arc<Index>,
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.upload.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let _write = self.index.writes.lock().await;
        let put = self.upload.complete().await?;
        self.index.follow(&self.objects, &self.location).await?;
        Ok(put)
    }

    async fn abort(&mut self) -> Result<()> {
        self.upload.abort().await
    }
}

#[cfg(test)]
mod tests {
    use object_store::{PutMode, WriteMultipart};

    use super::*;

    async fn keys(listing: BoxStream<'static, Result<ObjectMeta>>) -> Vec<String> {
        listing.map_ok(|m| m.location.to_string()).try_collect().await.unwrap()
    }

    async fn put(bucket: &MemoryBucket, key: &str) {
        bucket.put(&Path::from(key), PutPayload::from_static(b"x")).await.unwrap();
    }

    #[tokio::test]
    async fn listings_start_after_a_key_and_keep_to_whole_segments_of_the_prefix() {
        let bucket = MemoryBucket::default();
        for key in ["a/u000001.json", "a/u000002.json", "a/u000003.json", "a/sub/x", "ab/u000001.json", "b/y", "a"] {
            put(&bucket, key).await;
        }
        {
            let a = Path::from("a");
            assert_eq!(keys(bucket.list(Some(&a))).await, ["a/sub/x", "a/u000001.json", "a/u000002.json", "a/u000003.json"]);
            assert_eq!(keys(bucket.list_with_offset(Some(&a), &Path::from("a/u000001.json"))).await, ["a/u000002.json", "a/u000003.json"]);
            // An offset before the prefix lists all of it.
            assert_eq!(keys(bucket.list_with_offset(Some(&a), &Path::from("0"))).await.len(), 4);
            assert!(keys(bucket.list_with_offset(Some(&a), &Path::from("a/z"))).await.is_empty());
            assert_eq!(keys(bucket.list(None)).await.len(), 7);
            let tree = bucket.list_with_delimiter(Some(&a)).await.unwrap();
            assert_eq!(tree.common_prefixes, [Path::from("a/sub")]);
            assert_eq!(tree.objects.len(), 3);
        }
    }

    #[tokio::test]
    async fn long_listings_come_in_pages_and_stop_when_the_caller_does() {
        let bucket = MemoryBucket::default();
        for n in 0..2 * PAGE + 5 {
            put(&bucket, &format!("c/u{n:06}.json")).await;
        }
        {
            let c = Path::from("c");
            let all = keys(bucket.list(Some(&c))).await;
            assert_eq!(all.len(), 2 * PAGE + 5);
            assert!(all.windows(2).all(|w| w[0] < w[1]), "listed in key order");
            let after = keys(bucket.list_with_offset(Some(&c), &Path::from(format!("c/u{:06}.json", PAGE - 1)))).await;
            assert_eq!(after.first().map(String::as_str), Some("c/u001000.json"));
            assert_eq!(after.len(), PAGE + 5);
            let first = bucket.list(Some(&c)).take(3).try_collect::<Vec<_>>().await.unwrap();
            assert_eq!(first.len(), 3);
        }
    }

    #[tokio::test]
    async fn listings_follow_creates_updates_deletes_copies_and_uploads() {
        let bucket = MemoryBucket::default();
        {
            let key = Path::from("d/lease");
            let created = bucket.put_opts(&key, PutPayload::from_static(b"1"), PutMode::Create.into()).await.unwrap();
            assert!(
                bucket.put_opts(&key, PutPayload::from_static(b"2"), PutMode::Create.into()).await.is_err(),
                "a second create is refused"
            );
            let version = object_store::UpdateVersion { e_tag: created.e_tag, version: None };
            bucket.put_opts(&key, PutPayload::from_static(b"22"), PutMode::Update(version).into()).await.unwrap();
            let listed: Vec<ObjectMeta> = bucket.list(Some(&Path::from("d"))).try_collect().await.unwrap();
            assert_eq!(listed, [bucket.head(&key).await.unwrap()], "the listing shows the object as it is now");
            assert_eq!(listed[0].size, 2);

            bucket.copy(&key, &Path::from("d/copy")).await.unwrap();
            let mut upload = WriteMultipart::new(bucket.put_multipart(&Path::from("d/big")).await.unwrap());
            upload.write(b"many bytes");
            upload.finish().await.unwrap();
            assert_eq!(keys(bucket.list(Some(&Path::from("d")))).await, ["d/big", "d/copy", "d/lease"]);

            let gone = stream::iter([Ok(key.clone()), Ok(Path::from("d/copy"))]).boxed();
            bucket.delete_stream(gone).try_collect::<Vec<_>>().await.unwrap();
            assert_eq!(keys(bucket.list(Some(&Path::from("d")))).await, ["d/big"]);
        }
    }
}
