//! Settings of the Delta Lake sink.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// The type of a column of a table the sink creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// `string`.
    String,
    /// `long` (64-bit integer).
    Long,
    /// `integer` (32-bit).
    Integer,
    /// `double`.
    Double,
    /// `boolean`.
    Boolean,
    /// `timestamp` (RFC 3339 text in the records).
    Timestamp,
    /// `date` (`YYYY-MM-DD`).
    Date,
}

impl std::str::FromStr for ColumnType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "string" => ColumnType::String,
            "long" | "bigint" => ColumnType::Long,
            "integer" | "int" => ColumnType::Integer,
            "double" => ColumnType::Double,
            "boolean" => ColumnType::Boolean,
            "timestamp" => ColumnType::Timestamp,
            "date" => ColumnType::Date,
            other => {
                return Err(format!(
                    "`{other}` is not a column type: string, long, integer, double, boolean, timestamp or date"
                ));
            }
        })
    }
}

/// The Delta Lake sink.
#[derive(Clone, Debug)]
pub struct DeltaSinkConfig {
    /// `file:///path`, a local path, or `s3://bucket/path`.
    pub table: String,
    /// The app id of the `txn` actions: what identifies this sink's commits in the table.
    pub app_id: String,
    /// Storage options passed to the table's object store (`aws_endpoint_url`,
    /// `aws_access_key_id`, `aws_secret_access_key`, `aws_region`, `aws_allow_http`...).
    pub storage_options: HashMap<String, String>,
    /// The columns of a table the sink creates; empty: inferred from the first epoch.
    pub columns: Vec<(String, ColumnType)>,
    /// Where epochs are staged until their commit.
    pub staging: PathBuf,
    /// How long a commit keeps retrying through an outage before the run fails.
    pub publish_timeout: Duration,
    /// The sink writes dead letters (records are envelopes, one row each).
    pub dead_letters: bool,
}

impl DeltaSinkConfig {
    /// Commits to `table` as `app_id`, staging in `staging`.
    pub fn new(table: impl Into<String>, app_id: impl Into<String>, staging: impl Into<PathBuf>) -> Self {
        DeltaSinkConfig {
            table: table.into(),
            app_id: app_id.into(),
            storage_options: HashMap::new(),
            columns: Vec::new(),
            staging: staging.into(),
            publish_timeout: Duration::from_secs(300),
            dead_letters: false,
        }
    }
}
