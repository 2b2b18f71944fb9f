//! The prototype cache: support prototypes computed once and kept on disk (JSON, written
//! atomically), so that segmenting frames costs the encoder and the head only.
//!
//! A cache is valid for one bundle (its [`Bundle::hash`](crate::Bundle)), one input
//! size and one preprocessing (mean, std), and is refused otherwise with a one-line reason;
//! the caller then recomputes. It records the target names and the sha256 of every support
//! image and mask, so a cache made from other supports is recognised too
//! ([`PrototypeCache::same_supports`]).

use fss_core::error::{EdgeError, Result};
use fss_core::method::{Method, StoredSupport, SupportState};
use fss_core::preprocess::{InputSize, Normalization};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The cache format this build reads and writes.
pub const CACHE_FORMAT: u32 = 1;

/// What a cache must match to be used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheKey {
    /// The bundle's hash (manifest bytes and graph files).
    pub bundle_hash: String,
    /// `[height, width]` of the model input the prototypes were computed at.
    pub size: [usize; 2],
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl CacheKey {
    pub fn new(bundle_hash: &str, size: InputSize, norm: &Normalization) -> CacheKey {
        CacheKey {
            bundle_hash: bundle_hash.to_string(),
            size: [size.height, size.width],
            mean: norm.mean,
            std: norm.std,
        }
    }
}

/// One support shot: which target, which files (as given) and their contents' sha256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupportRecord {
    pub target: String,
    pub image: String,
    pub image_sha256: String,
    pub mask: String,
    pub mask_sha256: String,
}

/// The cache file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrototypeCache {
    pub format: u32,
    pub key: CacheKey,
    /// The bundle's method (`panet`).
    pub method: String,
    /// Target names; target i is label i + 1 of a segmentation.
    pub targets: Vec<String>,
    pub supports: Vec<SupportRecord>,
    /// The method's support state in its stored form ([`PrototypeCache::support`]).
    pub prototypes: StoredSupport,
}

impl PrototypeCache {
    /// A cache of `support` (its method is recorded with it).
    pub fn new(
        key: CacheKey,
        targets: Vec<String>,
        supports: Vec<SupportRecord>,
        support: &SupportState,
    ) -> PrototypeCache {
        PrototypeCache {
            format: CACHE_FORMAT,
            key,
            method: support.method().to_string(),
            targets,
            supports,
            prototypes: support.stored(),
        }
    }

    /// The support state the cache holds, for `method` (the bundle's): a cache of another
    /// method, or one whose parts do not fit the method, is an error naming `path`.
    pub fn support(&self, path: &Path, method: Method) -> Result<SupportState> {
        if self.method != method.to_string() {
            return Err(EdgeError::invalid(
                path,
                format!(
                    "prototype cache of method '{}', the bundle's is '{method}'",
                    self.method
                ),
            ));
        }
        SupportState::from_stored(method, self.prototypes.clone())
            .map_err(|e| EdgeError::invalid(path, format!("damaged prototype cache: {e}")))
    }

    /// Reads a cache file and checks that it is a well-formed cache of this format (not
    /// whether it fits a bundle: see [`PrototypeCache::check_key`]).
    pub fn read(path: &Path) -> Result<PrototypeCache> {
        let bytes = std::fs::read(path).map_err(|e| EdgeError::io(path, e))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            EdgeError::invalid(path, format!("not a prototype cache (invalid JSON: {e})"))
        })?;
        match value.get("format").and_then(|f| f.as_u64()) {
            Some(f) if f == CACHE_FORMAT as u64 => {}
            Some(f) => {
                return Err(EdgeError::invalid(
                    path,
                    format!("prototype cache format {f} is not supported (this edge reads format {CACHE_FORMAT})"),
                ))
            }
            None => return Err(EdgeError::invalid(path, "not a prototype cache (no \"format\" field)")),
        }
        let c: PrototypeCache = serde_json::from_value(value)
            .map_err(|e| EdgeError::invalid(path, format!("damaged prototype cache: {e}")))?;
        c.validate(path)?;
        Ok(c)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| {
            Err(EdgeError::invalid(
                path,
                format!("damaged prototype cache: {m}"),
            ))
        };
        let p = &self.prototypes;
        if self.targets.is_empty() || self.targets.len() != p.foreground.len() {
            return bad(format!(
                "{} target names for {} foreground prototypes",
                self.targets.len(),
                p.foreground.len()
            ));
        }
        if p.background.is_empty() || p.foreground.iter().any(|f| f.len() != p.background.len()) {
            return bad("prototypes of different lengths".into());
        }
        if p.background
            .iter()
            .chain(p.foreground.iter().flatten())
            .any(|v| !v.is_finite())
        {
            return bad("non-finite prototype values".into());
        }
        if self.targets.len() > 254 {
            return bad(format!("{} targets (at most 254)", self.targets.len()));
        }
        Ok(())
    }

    /// Errors (one line naming `path`) unless the cache was made for `key`.
    pub fn check_key(&self, path: &Path, key: &CacheKey) -> Result<()> {
        let k = &self.key;
        let why = if k.bundle_hash != key.bundle_hash {
            format!(
                "prototype cache was made for another bundle (bundle hash {}, this bundle is {})",
                short(&k.bundle_hash),
                short(&key.bundle_hash)
            )
        } else if k.size != key.size {
            format!(
                "prototype cache was made at input size {}x{}, this run uses {}x{}",
                k.size[0], k.size[1], key.size[0], key.size[1]
            )
        } else if k.mean != key.mean || k.std != key.std {
            format!(
                "prototype cache was made with other preprocessing (mean {:?} std {:?}, this run uses mean {:?} std {:?})",
                k.mean, k.std, key.mean, key.std
            )
        } else {
            return Ok(());
        };
        Err(EdgeError::invalid(path, why))
    }

    /// [`PrototypeCache::read`] then [`PrototypeCache::check_key`].
    pub fn load(path: &Path, key: &CacheKey) -> Result<PrototypeCache> {
        let c = Self::read(path)?;
        c.check_key(path, key)?;
        Ok(c)
    }

    /// Whether the cache holds the same targets made from the same support contents (file
    /// names may differ; the sha256 of images and masks must not).
    pub fn same_supports(&self, targets: &[String], supports: &[SupportRecord]) -> bool {
        self.targets == targets
            && self.supports.len() == supports.len()
            && self.supports.iter().zip(supports).all(|(a, b)| {
                a.target == b.target
                    && a.image_sha256 == b.image_sha256
                    && a.mask_sha256 == b.mask_sha256
            })
    }

    /// Writes the cache atomically (temporary file, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| EdgeError::invalid(path, format!("cannot encode the cache: {e}")))?;
        fss_core::fsutil::write_atomic(path, &json)
    }
}

/// The first 12 characters of a hash (any string: it may come from a damaged file).
fn short(h: &str) -> String {
    h.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fss_core::prototype::Prototypes;

    fn sample() -> PrototypeCache {
        PrototypeCache::new(
            CacheKey::new("abc123", InputSize::new(32, 48), &Normalization::IMAGENET),
            vec!["cat".into()],
            vec![SupportRecord {
                target: "cat".into(),
                image: "a.jpg".into(),
                image_sha256: "11".into(),
                mask: "a.png".into(),
                mask_sha256: "22".into(),
            }],
            &SupportState::Panet(Prototypes {
                background: vec![0.1, -0.2, 1e-7],
                foreground: vec![vec![0.3, 0.4, 0.123_456_79]],
            }),
        )
    }

    #[test]
    fn round_trip_is_exact_and_key_checked() {
        let dir = std::env::temp_dir().join(format!("edge-cache-test-{}", std::process::id()));
        let p = dir.join("protos.json");
        let c = sample();
        c.write(&p).unwrap();
        let key = c.key.clone();
        let back = PrototypeCache::load(&p, &key).unwrap();
        assert_eq!(back, c);
        assert!(back.same_supports(&c.targets, &c.supports));
        let state = back.support(&p, Method::Panet).unwrap();
        assert_eq!(state.prototypes().foreground[0][2], 0.123_456_79);
        let e = back.support(&p, Method::DpNet).unwrap_err().to_string();
        assert!(
            e.contains("method 'panet'") && e.contains("'dpnet'") && e.contains("protos.json"),
            "{e}"
        );
        let other = CacheKey::new("def456", InputSize::new(32, 48), &Normalization::IMAGENET);
        let e = PrototypeCache::load(&p, &other).unwrap_err().to_string();
        assert!(
            e.contains("another bundle") && e.contains("protos.json"),
            "{e}"
        );
        let other = CacheKey::new("abc123", InputSize::new(64, 48), &Normalization::IMAGENET);
        let e = PrototypeCache::load(&p, &other).unwrap_err().to_string();
        assert!(e.contains("input size 32x48"), "{e}");
        let other = CacheKey::new(
            "abc123",
            InputSize::new(32, 48),
            &Normalization::EFFICIENTNET_LITE,
        );
        let e = PrototypeCache::load(&p, &other).unwrap_err().to_string();
        assert!(e.contains("preprocessing"), "{e}");
        // Corrupt and foreign files.
        std::fs::write(&p, b"{\"format\": 1, \"key\": 3").unwrap();
        let e = PrototypeCache::load(&p, &key).unwrap_err().to_string();
        assert!(
            e.contains("not a prototype cache") && !e.contains('\n'),
            "{e}"
        );
        std::fs::write(&p, b"{\"format\": 7}").unwrap();
        let e = PrototypeCache::load(&p, &key).unwrap_err().to_string();
        assert!(e.contains("format 7"), "{e}");
        let mut bad = serde_json::to_value(&c).unwrap();
        bad["targets"] = serde_json::json!(["a", "b"]);
        std::fs::write(&p, serde_json::to_vec(&bad).unwrap()).unwrap();
        let e = PrototypeCache::load(&p, &key).unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
