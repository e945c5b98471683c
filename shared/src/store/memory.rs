//! An in-memory store for unit tests and for trying things out without any storage.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream;

use super::{
    check_key, check_prefix, clamp, BoxWriter, GetResult, ObjectMeta, ObjectStore, ObjectWriter,
    StoreError,
};

type Objects = Arc<RwLock<BTreeMap<String, Bytes>>>;

#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Objects,
}

/// A streaming write: a buffer, inserted whole when completed.
struct MemoryWriter {
    objects: Objects,
    key: String,
    buffer: BytesMut,
}

#[async_trait]
impl ObjectWriter for MemoryWriter {
    async fn write(&mut self, bytes: Bytes) -> Result<(), StoreError> {
        self.buffer.extend_from_slice(&bytes);
        Ok(())
    }

    async fn complete(self: Box<Self>) -> Result<(), StoreError> {
        let mut objects = self.objects.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        objects.insert(self.key, self.buffer.freeze());
        Ok(())
    }

    async fn abort(self: Box<Self>) -> Result<(), StoreError> {
        Ok(())
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self, key: &str) -> Result<Bytes, StoreError> {
        check_key(key)?;
        let objects = self.objects.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        objects.get(key).cloned().ok_or_else(|| StoreError::NotFound { key: key.to_owned() })
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Bytes>> {
        self.objects.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<GetResult, StoreError> {
        let bytes = self.read(key)?;
        Ok(GetResult { size: bytes.len() as u64, chunks: Box::pin(stream::iter([Ok(bytes)])) })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let bytes = self.read(key)?;
        Ok(ObjectMeta { key: key.to_owned(), size: bytes.len() as u64 })
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<GetResult, StoreError> {
        let bytes = self.read(key)?;
        let part = clamp(&range, bytes.len() as u64);
        let bytes = bytes.slice(part.start as usize..part.end as usize);
        Ok(GetResult { size: bytes.len() as u64, chunks: Box::pin(stream::iter([Ok(bytes)])) })
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        check_key(key)?;
        self.write().insert(key.to_owned(), bytes);
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        check_key(key)?;
        match self.write().entry(key.to_owned()) {
            std::collections::btree_map::Entry::Occupied(_) => {
                Err(StoreError::AlreadyExists { key: key.to_owned() })
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(bytes);
                Ok(())
            }
        }
    }

    async fn put_streaming(&self, key: &str) -> Result<BoxWriter, StoreError> {
        check_key(key)?;
        let objects = Arc::clone(&self.objects);
        Ok(Box::new(MemoryWriter { objects, key: key.to_owned(), buffer: BytesMut::new() }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        check_prefix(prefix)?;
        let objects = self.objects.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(objects
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, bytes)| ObjectMeta { key: key.clone(), size: bytes.len() as u64 })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        self.write().remove(key);
        Ok(())
    }
}
