//! Model names, versions and where a model's files live in the store.
//!
//! Registry layout: `models/<name>/<version>/model.onnx`,
//! `models/<name>/<version>/manifest.json` and `models/<name>/aliases/<alias>`; uploads
//! being staged live at `staging/<name>/<upload id>`. Names match
//! `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`, versions are positive integers without leading zeros,
//! `latest` means the highest, and aliases match `[A-Za-z][A-Za-z0-9._-]{0,63}` (so they
//! never look like a version) other than `latest`. Validation here is what keeps a name from
//! reaching outside its prefix.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use crate::error::Error;

/// A validated model name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName(String);

impl ModelName {
    pub const MAX_LEN: usize = 64;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The store prefix that holds every version of this model, ending with `/`.
    pub fn prefix(&self) -> String {
        format!("models/{}/", self.0)
    }
}

/// 1 to 64 characters from `[A-Za-z0-9._-]`, the first accepted by `first`.
fn is_identifier(s: &str, first: fn(char) -> bool) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(first)
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && s.len() <= ModelName::MAX_LEN
}

impl FromStr for ModelName {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        if is_identifier(name, |c| c.is_ascii_alphanumeric()) {
            Ok(Self(name.to_owned()))
        } else {
            Err(Error::invalid_request(format!(
                "invalid model name {name:?}: expected 1 to {} characters from [A-Za-z0-9._-], \
                 starting with a letter or digit",
                Self::MAX_LEN
            )))
        }
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A published version number: a positive integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(NonZeroU64);

impl Version {
    pub const MIN: Version = Version(NonZeroU64::MIN);

    pub fn new(n: u64) -> Option<Self> {
        NonZeroU64::new(n).map(Self)
    }

    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl FromStr for Version {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let canonical =
            !s.is_empty() && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit());
        canonical.then(|| s.parse::<u64>().ok()).flatten().and_then(Version::new).ok_or_else(|| {
            Error::invalid_request(format!(
                "invalid model version {s:?}: expected a positive integer or \"latest\""
            ))
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A validated alias name, such as `prod`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AliasName(String);

impl AliasName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AliasName {
    type Err = Error;

    fn from_str(alias: &str) -> Result<Self, Error> {
        if alias != "latest" && is_identifier(alias, |c| c.is_ascii_alphabetic()) {
            Ok(Self(alias.to_owned()))
        } else {
            Err(Error::invalid_request(format!(
                "invalid alias {alias:?}: expected 1 to 64 characters from [A-Za-z0-9._-], \
                 starting with a letter, and not \"latest\""
            )))
        }
    }
}

impl fmt::Display for AliasName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which version a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VersionSpec {
    Latest,
    Exact(Version),
    Alias(AliasName),
}

impl FromStr for VersionSpec {
    type Err = Error;

    /// `latest`, a version number, or an alias. A string that starts with a digit or a sign
    /// must be a valid version number.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.chars().next() {
            _ if s == "latest" => Ok(VersionSpec::Latest),
            Some(c) if c.is_ascii_alphabetic() => s.parse().map(VersionSpec::Alias),
            _ => s.parse().map(VersionSpec::Exact),
        }
    }
}

/// Where an alias of a model is stored.
pub fn alias_key(name: &ModelName, alias: &AliasName) -> String {
    format!("{}aliases/{alias}", name.prefix())
}

/// Where the pointer to a model's highest published version is stored (written by
/// model-upload; see [`crate::registry::publish`]).
pub fn latest_key(name: &ModelName) -> String {
    format!("{}latest", name.prefix())
}

/// The alias a key under `name.prefix()` stores, if it is an alias key.
pub fn alias_of_key(name: &ModelName, key: &str) -> Option<AliasName> {
    key.strip_prefix(&name.prefix())?.strip_prefix("aliases/")?.parse().ok()
}

/// Where an upload in progress is staged.
pub fn staging_key(name: &ModelName, upload: &UploadId) -> String {
    format!("staging/{name}/{upload}")
}

/// The identifier of a presigned upload: 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    /// A new random identifier.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }
}

impl FromStr for UploadId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_owned()))
        } else {
            Err(Error::invalid_request(format!("invalid upload id {s:?}: expected 32 hex digits")))
        }
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One published version of one model, and the keys of its files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelId {
    pub name: ModelName,
    pub version: Version,
}

impl ModelId {
    pub fn new(name: ModelName, version: Version) -> Self {
        Self { name, version }
    }

    pub fn model_key(&self) -> String {
        format!("{}{}/model.onnx", self.name.prefix(), self.version)
    }

    pub fn manifest_key(&self) -> String {
        format!("{}{}/manifest.json", self.name.prefix(), self.version)
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// The version a key under `name.prefix()` belongs to, if it is a manifest key: listing a
/// model's prefix and keeping what this returns gives its published versions.
pub fn version_of_manifest_key(name: &ModelName, key: &str) -> Option<Version> {
    let rest = key.strip_prefix(&name.prefix())?;
    let version = rest.strip_suffix("/manifest.json")?;
    version.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_pattern() {
        for ok in ["iris", "a", "Model-1.2_b", &"x".repeat(64)] {
            assert!(ok.parse::<ModelName>().is_ok(), "{ok:?} refused");
        }
        let long = "x".repeat(65);
        for bad in ["", ".hidden", "-a", "_a", "a/b", "..", "a b", "é", "a%2Fb", long.as_str()] {
            let err = bad.parse::<ModelName>().unwrap_err();
            assert_eq!(err.status(), 400, "{bad:?}");
            assert!(err.to_string().contains("invalid model name"), "{err}");
        }
    }

    #[test]
    fn versions_are_positive_integers_latest_or_aliases() {
        assert_eq!("latest".parse::<VersionSpec>().unwrap(), VersionSpec::Latest);
        let seven = VersionSpec::Exact(Version::new(7).unwrap());
        assert_eq!("7".parse::<VersionSpec>().unwrap(), seven);
        let prod = VersionSpec::Alias("prod".parse().unwrap());
        assert_eq!("prod".parse::<VersionSpec>().unwrap(), prod);
        for bad in ["0", "-1", "01", "1.0", "", "+3", "18446744073709551616", "1abc"] {
            let err = bad.parse::<VersionSpec>().unwrap_err();
            assert!(err.to_string().contains("invalid model version"), "{bad:?}: {err}");
        }
        for bad in ["a/b", "p%20", "x y"] {
            let err = bad.parse::<VersionSpec>().unwrap_err();
            assert!(err.to_string().contains("invalid alias"), "{bad:?}: {err}");
        }
        assert!("latest".parse::<AliasName>().is_err());
        assert!("_x".parse::<AliasName>().is_err());
    }

    #[test]
    fn alias_and_staging_keys_stay_in_their_prefixes() {
        let name: ModelName = "iris".parse().unwrap();
        let alias: AliasName = "prod".parse().unwrap();
        assert_eq!(alias_key(&name, &alias), "models/iris/aliases/prod");
        assert_eq!(alias_of_key(&name, "models/iris/aliases/prod"), Some(alias));
        assert_eq!(alias_of_key(&name, "models/iris/1/manifest.json"), None);
        let upload = UploadId::random();
        assert_eq!(upload.to_string().len(), 32);
        assert_eq!(upload.to_string().parse::<UploadId>().unwrap(), upload);
        assert!(staging_key(&name, &upload).starts_with("staging/iris/"));
        assert!("../../models/x".parse::<UploadId>().is_err());
    }

    #[test]
    fn keys_stay_under_the_model_prefix() {
        let id = ModelId::new("iris".parse().unwrap(), Version::new(3).unwrap());
        assert_eq!(id.model_key(), "models/iris/3/model.onnx");
        assert_eq!(id.manifest_key(), "models/iris/3/manifest.json");
        let name = id.name.clone();
        assert_eq!(version_of_manifest_key(&name, "models/iris/3/manifest.json"), Version::new(3));
        assert_eq!(version_of_manifest_key(&name, "models/iris/3/model.onnx"), None);
        assert_eq!(version_of_manifest_key(&name, "models/iris/x/manifest.json"), None);
        assert_eq!(version_of_manifest_key(&name, "models/iris2/3/manifest.json"), None);
    }
}
