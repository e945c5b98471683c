//! Step Functions Distributed Map item batches: `{"Items": [...], "BatchInput": {"model",
//! "version"?}}`, as an ItemBatcher sends them. A CSV item (an object of strings, columns in
//! header order) is a tabular row; any other item is read as a JSON Lines record. The answer
//! has one result per item, in order: `{"outputs": [...]}` or `{"error": "..."}`; when it
//! would not fit a state's payload it goes to the store and the answer says where.

use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::infer::{self, Inferred};
use super::input::{self, RowResult};
use super::minibatch::MiniBatch;
use super::Batch;
use crate::config::StoreLocation;
use crate::error::Error;
use crate::names::{ModelName, VersionSpec};
use crate::protocol::json;
use crate::protocol::oip::ResponseOutput;

/// An item batch.
#[derive(Debug, Clone, Deserialize)]
pub struct ItemBatch {
    #[serde(rename = "Items")]
    pub items: Vec<Item>,
    #[serde(rename = "BatchInput")]
    pub batch_input: BatchInput,
}

/// The ItemBatcher's `BatchInput`: the model and, optionally, its version or alias.
#[derive(Debug, Clone, Deserialize)]
pub struct BatchInput {
    pub model: String,
    #[serde(default)]
    pub version: Option<String>,
}

/// One item: a CSV row's columns in order (an object whose values are all strings), or any
/// other JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Columns(Vec<(String, String)>),
    Json(Value),
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ItemVisitor)
    }
}

/// Reads objects in their order (a `serde_json::Map` would sort the columns).
struct ItemVisitor;

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = Item;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Step Functions item")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
        let mut entries: Vec<(String, Value)> = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            entries.push((key, value));
        }
        if !entries.is_empty() && entries.iter().all(|(_, v)| v.is_string()) {
            let columns = entries
                .into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
                .collect();
            return Ok(Item::Columns(columns));
        }
        Ok(Item::Json(Value::Object(entries.into_iter().collect::<Map<String, Value>>())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Item, A::Error> {
        Value::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Item::Json)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Item, E> {
        Ok(Item::Json(Value::from(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Item, E> {
        Ok(Item::Json(Value::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Item, E> {
        Ok(Item::Json(Value::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Item, E> {
        Ok(Item::Json(Value::from(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Item, E> {
        Ok(Item::Json(Value::from(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Item, E> {
        Ok(Item::Json(Value::Null))
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum ItemResult {
    Outputs { outputs: Vec<ResponseOutput> },
    Error { error: String },
}

#[derive(Serialize)]
struct Answer {
    model_name: String,
    model_version: String,
    results: Vec<ItemResult>,
}

/// Runs an item batch; the answer is inline or, when larger than the configured limit, in
/// the store (`results_location`).
pub async fn run(batch: &Batch, event: ItemBatch) -> Result<Value, Error> {
    let name: ModelName = event.batch_input.model.parse()?;
    let spec = event.batch_input.version.as_deref().map_or(Ok(VersionSpec::Latest), str::parse)?;
    let registry = batch.predictor.registry();
    let id = registry.resolve(&name, &spec).await?;
    let signature = registry.manifest(&id).await?.signature;
    let tabular = input::tabular_input("Step Functions items", &signature);
    let rows: Vec<RowResult> = event
        .items
        .into_iter()
        .map(|item| match item {
            Item::Columns(columns) => {
                let spec = tabular.as_ref().map_err(Clone::clone)?;
                input::decode_fields(columns.iter().map(|(_, v)| v.as_bytes()), spec)
            }
            Item::Json(value) => input::decode_value(value, &signature),
        })
        .collect();
    let mut results = Vec::with_capacity(rows.len());
    let bounds = batch.bounds(&id).await?;
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let mut chunk = MiniBatch::new(bounds);
        while !chunk.is_full() {
            match rows.next() {
                Some(row) => chunk.push(row),
                None => break,
            }
        }
        let inferred = infer::infer(&batch.predictor, &id, chunk).await?;
        results.extend((0..inferred.outcomes.len()).map(|index| result(&inferred, index)));
    }
    let answer =
        Answer { model_name: id.name.to_string(), model_version: id.version.to_string(), results };
    let body = json::to_vec(&answer).map_err(|e| Error::internal("writing the results", e))?;
    if body.len() <= batch.settings.max_inline_result_bytes {
        return json::from_slice(&body).map_err(|e| Error::internal("reading the results", e));
    }
    let key = format!(
        "{}items/{}/{}.json",
        batch.settings.output_prefix,
        id,
        hex::encode(Sha256::digest(&body))
    );
    let count = answer.results.len();
    batch.store.put(&key, body.into()).await?;
    Ok(serde_json::json!({
        "model_name": answer.model_name,
        "model_version": answer.model_version,
        "count": count,
        "results_location": location(&batch.location, &key),
    }))
}

fn result(inferred: &Inferred, index: usize) -> ItemResult {
    match inferred.outputs(index) {
        Ok(outputs) => ItemResult::Outputs {
            outputs: outputs.iter().map(|o| ResponseOutput::from(o.to_tensor())).collect(),
        },
        Err(err) => ItemResult::Error { error: err.client_message() },
    }
}

/// Where a store key is, for whoever reads the answer: bucket and object key on S3.
fn location(store: &StoreLocation, key: &str) -> Value {
    match store {
        StoreLocation::S3 { bucket, prefix } => {
            let object = format!("{}{key}", super::settings::folder(prefix));
            serde_json::json!({"bucket": bucket, "key": object, "uri": format!("s3://{bucket}/{object}")})
        }
        StoreLocation::Local(dir) => serde_json::json!({"path": dir.join(key)}),
        StoreLocation::Memory => serde_json::json!({"key": key}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_items_keep_their_column_order() {
        let event: ItemBatch = serde_json::from_str(
            r#"{"Items": [{"z": "5.1", "a": "3.5"}, {"x": [1, 2]}, [1, 2]], "BatchInput": {"model": "iris"}}"#,
        )
        .unwrap();
        assert_eq!(
            event.items[0],
            Item::Columns(vec![("z".into(), "5.1".into()), ("a".into(), "3.5".into())])
        );
        assert_eq!(event.items[1], Item::Json(serde_json::json!({"x": [1, 2]})));
        assert_eq!(event.items[2], Item::Json(serde_json::json!([1, 2])));
        assert_eq!(event.batch_input.version, None);
    }
}
