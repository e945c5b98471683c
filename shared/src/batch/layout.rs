//! Where batch files live: an S3 event's URL-encoded, bucket-absolute key mapped onto the
//! store's keys, an input key read as `<input prefix><model>[@<version|alias>]/<path>`, and
//! the output and manifest keys of an input (`<output prefix><model...>/<path>.jsonl`,
//! `....manifest.json`).

use percent_encoding::percent_decode_str;

use super::input::Format;
use super::settings::BatchSettings;
use crate::config::StoreLocation;
use crate::error::Error;
use crate::names::{ModelName, VersionSpec};

/// What an S3 event's key is to batch-predict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A batch input, by its store key.
    Input(InputObject),
    /// An output of batch-predict: never processed, so outputs cannot trigger the function.
    Output(String),
}

/// A batch input: its store key and its path below the input prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputObject {
    pub key: String,
    /// `<model>[@<version>]/<path>`.
    pub relative: String,
}

/// Decodes an S3 event key: `+` is a space, `%XX` a byte, and the bytes UTF-8.
pub fn decode_event_key(raw: &str) -> Result<String, Error> {
    let spaced = raw.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8().map(|k| k.into_owned()).map_err(|_| {
        Error::InvalidBatchInput {
            key: raw.to_owned(),
            problem: "the event's key is not URL-encoded UTF-8".to_owned(),
        }
    })
}

/// Maps an S3 event's bucket and (encoded) key onto the store: the bucket must be the store's
/// and the key below its prefix; then the key must be under the output prefix (ignored) or
/// the input prefix. A store that is not S3 takes keys as they are, from any bucket.
pub fn place(
    location: &StoreLocation,
    settings: &BatchSettings,
    bucket: &str,
    raw_key: &str,
) -> Result<Placement, Error> {
    let key = decode_event_key(raw_key)?;
    let refuse = |problem: String| Error::InvalidBatchInput { key: key.clone(), problem };
    let store_key = match location {
        StoreLocation::S3 { bucket: own, prefix } => {
            if bucket != own {
                return Err(refuse(format!(
                    "the event comes from bucket `{bucket}`, not this function's `{own}`"
                )));
            }
            let prefix = super::settings::folder(prefix);
            key.strip_prefix(&prefix)
                .ok_or_else(|| refuse(format!("the key is outside the store's prefix `{prefix}`")))?
                .to_owned()
        }
        StoreLocation::Local(_) | StoreLocation::Memory => key.clone(),
    };
    if store_key.starts_with(&settings.output_prefix) {
        return Ok(Placement::Output(store_key));
    }
    let relative = store_key.strip_prefix(&settings.input_prefix).ok_or_else(|| {
        refuse(format!("the key is outside the batch input prefix `{}`", settings.input_prefix))
    })?;
    crate::store::check_key(&store_key).map_err(|e| refuse(e.to_string()))?;
    Ok(Placement::Input(InputObject { relative: relative.to_owned(), key: store_key }))
}

impl InputObject {
    /// An input at `relative` below the input prefix.
    pub fn at(settings: &BatchSettings, relative: &str) -> Self {
        Self { key: format!("{}{relative}", settings.input_prefix), relative: relative.to_owned() }
    }

    /// The model and version its first path segment names.
    pub fn target(&self) -> Result<(ModelName, VersionSpec), Error> {
        let refuse = |problem: String| Error::InvalidBatchInput { key: self.key.clone(), problem };
        let layout = "batch inputs are <input prefix><model>[@<version or alias>]/<file>";
        let (folder, _) = self
            .relative
            .split_once('/')
            .ok_or_else(|| refuse(format!("no model folder in the key; {layout}")))?;
        let (name, version) = match folder.split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (folder, None),
        };
        let name = name.parse().map_err(|e: Error| refuse(format!("{e}; {layout}")))?;
        let spec = version
            .map_or(Ok(VersionSpec::Latest), str::parse)
            .map_err(|e: Error| refuse(format!("{e}; {layout}")))?;
        Ok((name, spec))
    }

    /// Its format, by its name's suffix.
    pub fn format(&self) -> Result<Format, Error> {
        Format::of(&self.relative).ok_or_else(|| Error::InvalidBatchInput {
            key: self.key.clone(),
            problem: "unsupported file type: batch inputs end with .jsonl (or .ndjson), .csv or \
                      .npy, optionally followed by .gz"
                .to_owned(),
        })
    }

    /// Where its predictions go.
    pub fn output_key(&self, settings: &BatchSettings) -> String {
        format!("{}{}.jsonl", settings.output_prefix, self.relative)
    }

    /// Where its manifest goes, written last.
    pub fn manifest_key(&self, settings: &BatchSettings) -> String {
        format!("{}{}.manifest.json", settings.output_prefix, self.relative)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3() -> StoreLocation {
        StoreLocation::S3 { bucket: "b".into(), prefix: "maas".into() }
    }

    fn input(key: &str) -> InputObject {
        match place(&s3(), &BatchSettings::default(), "b", key).unwrap() {
            Placement::Input(input) => input,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn event_keys_are_url_decoded_and_mapped_onto_the_store() {
        let object = input("maas/batch/input/iris%402/my+rows+%C3%A9t%C3%A9%2B1.csv");
        assert_eq!(object.key, "batch/input/iris@2/my rows été+1.csv");
        assert_eq!(object.relative, "iris@2/my rows été+1.csv");
        let (name, spec) = object.target().unwrap();
        assert_eq!(
            (name.to_string(), spec),
            ("iris".into(), VersionSpec::Exact("2".parse().unwrap()))
        );
        let settings = BatchSettings::default();
        assert_eq!(object.output_key(&settings), "batch/output/iris@2/my rows été+1.csv.jsonl");
        assert_eq!(
            object.manifest_key(&settings),
            "batch/output/iris@2/my rows été+1.csv.manifest.json"
        );
    }

    #[test]
    fn other_buckets_prefixes_and_outputs_are_not_inputs() {
        let settings = BatchSettings::default();
        let other_bucket = place(&s3(), &settings, "elsewhere", "maas/batch/input/iris/a.csv");
        assert!(matches!(other_bucket, Err(Error::InvalidBatchInput { .. })), "{other_bucket:?}");
        let outside = place(&s3(), &settings, "b", "other/batch/input/iris/a.csv");
        assert!(matches!(outside, Err(Error::InvalidBatchInput { .. })), "{outside:?}");
        let models = place(&s3(), &settings, "b", "maas/models/iris/1/model.onnx");
        assert!(matches!(models, Err(Error::InvalidBatchInput { .. })), "{models:?}");
        let output = place(&s3(), &settings, "b", "maas/batch/output/iris/a.csv.jsonl").unwrap();
        assert_eq!(output, Placement::Output("batch/output/iris/a.csv.jsonl".into()));
        let escape = place(&s3(), &settings, "b", "maas/batch/input/iris/../../models/x.csv");
        assert!(matches!(escape, Err(Error::InvalidBatchInput { .. })), "{escape:?}");
        let bad_utf8 = place(&s3(), &settings, "b", "maas/batch/input/iris/%FF.csv");
        assert!(matches!(bad_utf8, Err(Error::InvalidBatchInput { .. })), "{bad_utf8:?}");
    }

    #[test]
    fn keys_naming_no_model_are_refused_with_the_layout() {
        for key in [
            "maas/batch/input/rows.csv",
            "maas/batch/input/Bad%20Name/rows.csv",
            "maas/batch/input/iris@-1/rows.csv",
        ] {
            let err = input(key).target().unwrap_err();
            assert!(err.to_string().contains("<model>[@<version or alias>]"), "{key}: {err}");
        }
        assert!(input("maas/batch/input/iris/rows.parquet").format().is_err());
    }
}
