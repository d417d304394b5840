//! The object store for Parquet files is the `object_store` crate's own trait; this
//! module only picks the implementation from `archive.url`.

use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use std::path::Path;
use std::sync::Arc;

/// Why an object store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ObjectStoreError {
    #[error(
        "unsupported archive.url {0:?}: use file:///path or a plain path (s3:// needs object_store's `aws` feature, which this build leaves out)"
    )]
    Unsupported(String),
    #[error("cannot open {0}: {1}")]
    Open(String, String),
}

/// Opens the store named by `url` (`file:///path`, or a plain path); empty means
/// `<data_dir>/archive`.
pub fn object_store_from_url(
    url: &str,
    data_dir: &Path,
) -> Result<Arc<dyn ObjectStore>, ObjectStoreError> {
    let path = if url.is_empty() {
        data_dir.join("archive")
    } else if let Some(p) = url.strip_prefix("file://") {
        Path::new(p).to_path_buf()
    } else if url.contains("://") {
        return Err(ObjectStoreError::Unsupported(url.to_string()));
    } else {
        Path::new(url).to_path_buf()
    };
    std::fs::create_dir_all(&path)
        .map_err(|e| ObjectStoreError::Open(path.display().to_string(), e.to_string()))?;
    let fs = LocalFileSystem::new_with_prefix(&path)
        .map_err(|e| ObjectStoreError::Open(path.display().to_string(), e.to_string()))?;
    Ok(Arc::new(fs))
}
