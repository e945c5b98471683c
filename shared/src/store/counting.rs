//! A store decorator that counts the calls reaching the store it wraps, by kind: how tests
//! prove that caches and single-flight loading spare the store.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{BoxWriter, GetResult, ObjectMeta, ObjectStore, SharedStore, StoreError};

/// Counts the calls that reach `inner`, by kind.
#[derive(Debug)]
pub struct CountingStore {
    inner: SharedStore,
    pub gets: AtomicUsize,
    pub heads: AtomicUsize,
    pub lists: AtomicUsize,
    pub puts: AtomicUsize,
    pub deletes: AtomicUsize,
    /// Every key read with `get` or `get_range` (both counted in `gets`), in order.
    pub got: Mutex<Vec<String>>,
}

impl CountingStore {
    pub fn new(inner: SharedStore) -> Arc<Self> {
        Arc::new(Self {
            inner,
            gets: AtomicUsize::new(0),
            heads: AtomicUsize::new(0),
            lists: AtomicUsize::new(0),
            puts: AtomicUsize::new(0),
            deletes: AtomicUsize::new(0),
            got: Mutex::new(Vec::new()),
        })
    }

    /// How many times `key` was read.
    pub fn gets_of(&self, key: &str) -> usize {
        self.got
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter(|k| *k == key)
            .count()
    }

    fn count_get(&self, key: &str) {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.got.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(key.to_owned());
    }

    /// Calls of every kind so far.
    pub fn total(&self) -> usize {
        [&self.gets, &self.heads, &self.lists, &self.puts, &self.deletes]
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .sum()
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn get(&self, key: &str) -> Result<GetResult, StoreError> {
        self.count_get(key);
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.heads.fetch_add(1, Ordering::SeqCst);
        self.inner.head(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<GetResult, StoreError> {
        self.count_get(key);
        self.inner.get_range(key, range).await
    }
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put(key, bytes).await
    }
    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put_if_absent(key, bytes).await
    }
    async fn put_streaming(&self, key: &str) -> Result<BoxWriter, StoreError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put_streaming(key).await
    }
    async fn presign_put(&self, key: &str, expires_in: Duration) -> Result<String, StoreError> {
        self.inner.presign_put(key, expires_in).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.deletes.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(key).await
    }
}
