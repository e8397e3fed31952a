//! Runnable examples of keel's Rust API; see the `[[example]]` targets of this package.
