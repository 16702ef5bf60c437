//! Object-store locations: `file://` paths (the default) and `s3://bucket/prefix` on any
//! S3-compatible store. Every table and input file is reached through one of these.

use std::sync::Arc;

use datafusion::execution::object_store::ObjectStoreUrl;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;
use url::Url;

use crate::error::{EngineError, Result};

/// How to reach S3-compatible stores. Unset fields fall back to the usual `AWS_*`
/// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
/// `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...).
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Allow plain HTTP; implied by an `http://` endpoint.
    pub allow_http: bool,
}

/// A place in an object store: the store, the URL DataFusion knows it by, and the path
/// prefix inside it.
#[derive(Clone)]
pub struct Location {
    /// The URL as given, normalised (`file:///abs/path` or `s3://bucket/prefix`).
    pub url: String,
    pub store_url: ObjectStoreUrl,
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Location").field("url", &self.url).finish()
    }
}

impl Location {
    /// Resolve a local path, a `file://` URL or an `s3://` URL.
    pub fn parse(url_or_path: &str, s3: &S3Options) -> Result<Location> {
        let invalid = |reason: &str| EngineError::InvalidLocation {
            url: url_or_path.to_string(),
            reason: reason.to_string(),
        };
        if url_or_path.is_empty() {
            return Err(invalid("empty location"));
        }
        if let Some(rest) = url_or_path.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("missing bucket name (expected s3://bucket/prefix)"));
            }
            let store = s3_store(bucket, s3).map_err(|e| invalid(&e.to_string()))?;
            let prefix =
                Path::parse(prefix.trim_end_matches('/')).map_err(|e| invalid(&e.to_string()))?;
            let store_url = ObjectStoreUrl::parse(format!("s3://{bucket}"))?;
            let url = if prefix.as_ref().is_empty() {
                format!("s3://{bucket}")
            } else {
                format!("s3://{bucket}/{prefix}")
            };
            return Ok(Location {
                url,
                store_url,
                store,
                prefix,
            });
        }
        let local = if url_or_path.starts_with("file://") {
            let url = Url::parse(url_or_path).map_err(|e| invalid(&e.to_string()))?;
            url.to_file_path()
                .map_err(|_| invalid("not a local file URL (expected file:///absolute/path)"))?
        } else if url_or_path.contains("://") {
            return Err(invalid(
                "unsupported scheme (use a local path, file:// or s3://)",
            ));
        } else {
            std::path::PathBuf::from(url_or_path)
        };
        let abs = normalize(&std::path::absolute(&local).map_err(|e| invalid(&e.to_string()))?);
        let prefix = Path::from_absolute_path(&abs).map_err(|e| invalid(&e.to_string()))?;
        let url = Url::from_file_path(&abs)
            .map_err(|_| invalid("cannot make a file URL of this path"))?
            .to_string();
        Ok(Location {
            url: url.trim_end_matches('/').to_string(),
            store_url: ObjectStoreUrl::local_filesystem(),
            store: Arc::new(LocalFileSystem::new()),
            prefix,
        })
    }

    /// A location below this one.
    pub fn child(&self, name: &str) -> Location {
        let mut prefix = self.prefix.clone();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            prefix = prefix.join(part);
        }
        Location {
            url: format!("{}/{}", self.url, name.trim_matches('/')),
            store_url: self.store_url.clone(),
            store: Arc::clone(&self.store),
            prefix,
        }
    }

    /// The path of `name` below this location.
    pub fn path(&self, name: &str) -> Path {
        self.child(name).prefix
    }

    /// Whether this is a local directory or file.
    pub fn is_local(&self) -> bool {
        self.store_url.as_str().starts_with("file://")
    }

    /// The URL DataFusion uses to list or read this location as a table.
    pub fn table_url(&self) -> String {
        format!("{}{}", self.store_url.as_str(), self.prefix)
    }
}

/// Resolve `.` and `..` without touching the filesystem (object-store paths allow
/// neither).
fn normalize(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn s3_store(bucket: &str, opts: &S3Options) -> object_store::Result<Arc<dyn ObjectStore>> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    let endpoint = opts
        .endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    if let Some(endpoint) = &endpoint {
        builder = builder.with_endpoint(endpoint);
        if endpoint.starts_with("http://") {
            builder = builder.with_allow_http(true);
        }
    }
    if opts.allow_http {
        builder = builder.with_allow_http(true);
    }
    let region = opts
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".to_string());
    builder = builder.with_region(region);
    if let Some(key) = &opts.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &opts.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    if let Some(token) = &opts.session_token {
        builder = builder.with_token(token);
    }
    Ok(Arc::new(builder.build()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_become_file_urls() {
        let loc = Location::parse("/tmp/wh", &S3Options::default()).unwrap();
        assert_eq!(loc.url, "file:///tmp/wh");
        assert_eq!(loc.prefix.as_ref(), "tmp/wh");
        assert_eq!(
            loc.child("events/_log").prefix.as_ref(),
            "tmp/wh/events/_log"
        );
        let same = Location::parse("file:///tmp/wh/", &S3Options::default()).unwrap();
        assert_eq!(same.prefix, loc.prefix);
        let dotted = Location::parse("/tmp/x/../wh/./", &S3Options::default()).unwrap();
        assert_eq!(dotted.prefix, loc.prefix);
    }

    #[test]
    fn s3_urls_name_bucket_and_prefix() {
        let opts = S3Options {
            endpoint: Some("http://127.0.0.1:9".into()),
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            ..Default::default()
        };
        let loc = Location::parse("s3://bucket/a/b/", &opts).unwrap();
        assert_eq!(loc.store_url.as_str(), "s3://bucket/");
        assert_eq!(loc.prefix.as_ref(), "a/b");
        assert_eq!(loc.url, "s3://bucket/a/b");
    }

    #[test]
    fn bad_locations_are_clear_errors() {
        let err = Location::parse("ftp://x/y", &S3Options::default()).unwrap_err();
        assert!(err.to_string().contains("unsupported scheme"), "{err}");
        let err = Location::parse("s3:///x", &S3Options::default()).unwrap_err();
        assert!(err.to_string().contains("missing bucket"), "{err}");
    }
}
