//! Model names, versions and where a model's files live in the store.
//!
//! Registry layout: `models/<name>/<version>/model.onnx` and
//! `models/<name>/<version>/manifest.json`. Names match `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`,
//! versions are positive integers without leading zeros, and `latest` means the highest.
//! Validation here is what keeps a name from reaching outside its prefix.

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

impl FromStr for ModelName {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        let mut chars = name.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if first_ok && rest_ok && name.len() <= Self::MAX_LEN {
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
        canonical
            .then(|| s.parse::<u64>().ok())
            .flatten()
            .and_then(Version::new)
            .ok_or_else(|| {
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

/// Which version a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionSpec {
    Latest,
    Exact(Version),
}

impl FromStr for VersionSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if s == "latest" {
            Ok(VersionSpec::Latest)
        } else {
            s.parse().map(VersionSpec::Exact)
        }
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
        for bad in [
            "",
            ".hidden",
            "-a",
            "_a",
            "a/b",
            "..",
            "a b",
            "é",
            "a%2Fb",
            long.as_str(),
        ] {
            let err = bad.parse::<ModelName>().unwrap_err();
            assert_eq!(err.status(), 400, "{bad:?}");
            assert!(err.to_string().contains("invalid model name"), "{err}");
        }
    }

    #[test]
    fn versions_are_positive_integers_or_latest() {
        assert_eq!(
            "latest".parse::<VersionSpec>().unwrap(),
            VersionSpec::Latest
        );
        assert_eq!(
            "7".parse::<VersionSpec>().unwrap(),
            VersionSpec::Exact(Version::new(7).unwrap())
        );
        for bad in [
            "0",
            "-1",
            "01",
            "1.0",
            "abc",
            "",
            "+3",
            "18446744073709551616",
        ] {
            let err = bad.parse::<VersionSpec>().unwrap_err();
            assert!(
                err.to_string().contains("invalid model version"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn keys_stay_under_the_model_prefix() {
        let id = ModelId::new("iris".parse().unwrap(), Version::new(3).unwrap());
        assert_eq!(id.model_key(), "models/iris/3/model.onnx");
        assert_eq!(id.manifest_key(), "models/iris/3/manifest.json");
        let name = id.name.clone();
        assert_eq!(
            version_of_manifest_key(&name, "models/iris/3/manifest.json"),
            Version::new(3)
        );
        assert_eq!(
            version_of_manifest_key(&name, "models/iris/3/model.onnx"),
            None
        );
        assert_eq!(
            version_of_manifest_key(&name, "models/iris/x/manifest.json"),
            None
        );
        assert_eq!(
            version_of_manifest_key(&name, "models/iris2/3/manifest.json"),
            None
        );
    }
}
