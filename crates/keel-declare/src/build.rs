//! From a pipeline file to a runnable [`Pipeline`]: loading, checking every key, building.
//!
//! Everything that can be checked without touching the data is checked here, and every
//! problem is reported with its line and key, before any work starts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keel::policy::{
    Action, Backoff, BreakerConfig, BudgetAction, ClassActions, Classifier, ClassifyRule, ErrorBudget, Jitter,
    Policies, RetryBudget, RetryPolicy,
};
use keel::{Class, FileCheckpointStore, Options, Pipeline, PipelineBuilder, WatermarkConfig};
use keel_connectors::file::{CsvDialect, FileFormat, FileSink, FileSinkConfig, FileSource, FileSourceConfig};
use keel_connectors::generator::{GeneratorConfig, GeneratorSource};
use keel_connectors::stdout::StdoutSink;

use crate::config::*;
use crate::doc::FieldPath;
use crate::encode::{CsvOut, DocEncoder, csv_header};
use crate::error::{ConfigError, ConfigErrors, Errors, KeyPath};
use crate::interpolate::interpolate;
use crate::source::AnySource;
use crate::steps::*;

/// The pipeline type a pipeline file builds.
pub type DeclaredPipeline = Pipeline<AnySource, DocChain, DocEncoder>;

/// A pipeline file, read and parsed.
#[derive(Debug)]
pub struct Loaded {
    /// The file.
    pub path: PathBuf,
    /// Its directory: relative paths in the file are relative to it.
    pub dir: PathBuf,
    /// The text after `${VAR}` interpolation.
    pub text: String,
    /// The parsed configuration.
    pub config: PipelineConfig,
}

impl Loaded {
    /// A path from the file, made relative to the file's directory.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// The checkpoint directory.
    pub fn state_dir(&self) -> PathBuf {
        self.resolve(&self.config.checkpoint.path)
    }

    /// What a run from scratch would delete, in words (`3 checkpoints`, `12 files in
    /// out/records`), empty when there is nothing: the checkpoints, and the visible files of
    /// every file sink and dead-letter directory. Read errors are returned, never guessed.
    pub fn from_scratch_targets(&self) -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        let manifests = keel::CheckpointStore::list(&FileCheckpointStore::new(self.state_dir()))?.len();
        if manifests > 0 {
            out.push(format!("{manifests} checkpoints in {}", self.state_dir().display()));
        }
        if self.state_dir().join("replays").exists() {
            out.push(format!("the replays in {}", self.state_dir().join("replays").display()));
        }
        let mut dirs: Vec<PathBuf> = self
            .config
            .sinks
            .iter()
            .filter_map(|s| match s {
                SinkConfig::Files(f) => Some(self.resolve(&f.path)),
                _ => None,
            })
            .collect();
        if let Some(d) = &self.config.dead_letter
            && matches!(d.kind, DeadLetterKind::Files | DeadLetterKind::Kafka)
        {
            dirs.push(self.resolve(&d.path));
            dirs.extend(d.fallback.as_deref().map(|f| self.resolve(f)));
        }
        for dir in dirs {
            let visible = match std::fs::read_dir(&dir) {
                Ok(entries) => entries
                    .map(|e| e.map(|e| !e.file_name().to_string_lossy().starts_with(['.', '_'])))
                    .collect::<std::io::Result<Vec<bool>>>()?
                    .into_iter()
                    .filter(|v| *v)
                    .count(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => return Err(e),
            };
            if visible > 0 {
                out.push(format!("{visible} files in {}", dir.display()));
            }
        }
        Ok(out)
    }

    /// A fingerprint of the definition (CRC-32C of the interpolated text).
    pub fn fingerprint(&self) -> String {
        format!("{:08x}", crc32c::crc32c(self.text.as_bytes()))
    }
}

/// Reads, interpolates and parses a pipeline file.
///
/// Errors: the file cannot be read; a `${VAR}` is unset; every TOML syntax error; or else
/// every unknown key, wrong type, bad value and missing key of the file, each at its own line
/// and key path, in file order (what [`crate::de::from_tree`] collects). The checks of
/// [`build`] run on a file that has none of these.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let one = |line: Option<usize>, message: String| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line,
            key: None,
            message,
        }])
    };
    let raw = std::fs::read_to_string(path).map_err(|e| one(None, format!("cannot read the pipeline file: {e}")))?;
    let text = interpolate(&raw, |k| std::env::var(k).ok()).map_err(|(line, m)| one(Some(line), m))?;
    // an error at byte `start` of the text
    let at = |start: Option<usize>, key: Option<String>, message: String| ConfigError {
        file: path.to_path_buf(),
        line: start.map(|s| line_at(&text, s)),
        key,
        message,
    };
    let (tree, syntax) = toml::de::DeTable::parse_recoverable(&text);
    if !syntax.is_empty() {
        let errors = syntax
            .iter()
            .map(|e| at(e.span().map(|s| s.start), None, e.message().trim_end().to_owned()));
        return Err(ConfigErrors(errors.collect()));
    }
    let config: PipelineConfig = crate::de::from_tree(tree).map_err(|problems| {
        let key = |p: &KeyPath| (!p.0.is_empty()).then(|| p.to_string());
        ConfigErrors(
            problems
                .into_iter()
                .map(|p| at(Some(p.span.start), key(&p.path), p.message))
                .collect(),
        )
    })?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(Loaded {
        path: path.to_path_buf(),
        dir,
        text,
        config,
    })
}

/// The 1-based line of byte `offset` of `text`.
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn is_snake_case(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && s.as_bytes()[0].is_ascii_lowercase()
}

fn field(errors: &mut Errors<'_>, at: &KeyPath, text: &str) -> Option<FieldPath> {
    let p = FieldPath::parse(text);
    if p.is_none() {
        errors.add(at, format!("`{text}` is not a field name (use `name` or `a.b.c`)"));
    }
    p
}

fn sink_format(cfg: &SinkConfig) -> (DocEncoder, Option<String>) {
    match cfg {
        SinkConfig::Files(crate::config::FilesSinkConfig {
            format: FileFormat::Csv,
            columns,
            neutralize_formulas,
            ..
        })
        | SinkConfig::S3(crate::config::S3SinkToml {
            format: FileFormat::Csv,
            columns,
            neutralize_formulas,
            ..
        }) => {
            let cols: Vec<String> = columns.clone().unwrap_or_default();
            let header = csv_header(&cols);
            let out = CsvOut {
                columns: cols.into(),
                neutralize_formulas: *neutralize_formulas,
            };
            (DocEncoder::Csv(out), Some(header))
        }
        SinkConfig::Kafka(crate::config::KafkaSinkToml { key: Some(field), .. })
        | SinkConfig::Nats(crate::config::NatsSinkToml { key: Some(field), .. })
        | SinkConfig::RedisStream(crate::config::RedisStreamSinkToml { key: Some(field), .. }) => {
            (DocEncoder::JsonKeyed(field.as_str().into()), None)
        }
        _ => (DocEncoder::Json, None),
    }
}

/// The CSV dialect of a parse step (unchecked: see [`check_dialect`]).
fn csv_dialect(p: &ParseConfig) -> CsvDialect {
    let d = CsvDialect::default();
    let byte = |c: Option<char>, default: u8| c.map_or(default, |c| if c.is_ascii() { c as u8 } else { default });
    CsvDialect {
        delimiter: byte(p.delimiter, d.delimiter),
        quote: byte(p.quote, d.quote),
        escape: p.escape.map(|c| byte(Some(c), b'\\')),
        header: p.header.unwrap_or(p.columns.is_none()),
    }
}

/// Delimiter, quote and escape: single ASCII characters, no line breaks, all different.
fn check_dialect(p: &ParseConfig) -> Result<(), (&'static str, String)> {
    let chars = [("delimiter", p.delimiter), ("quote", p.quote), ("escape", p.escape)];
    for (key, c) in chars {
        if let Some(c) = c
            && (!c.is_ascii() || c == '\n' || c == '\r')
        {
            return Err((
                key,
                format!(
                    "`{}` must be one ASCII character other than a line break",
                    c.escape_default()
                ),
            ));
        }
    }
    let d = csv_dialect(p);
    if d.delimiter == d.quote || d.escape == Some(d.delimiter) || d.escape == Some(d.quote) {
        return Err((
            "delimiter",
            "the delimiter, the quote and the escape must differ".into(),
        ));
    }
    Ok(())
}

/// The file source of a pipeline file: its CSV framing follows the first CSV `parse` step,
/// and `[errors] max_record_bytes` bounds its records.
pub(crate) fn files_source(loaded: &Loaded, f: &FilesSourceConfig) -> FileSourceConfig {
    let mut sc = FileSourceConfig::new(loaded.resolve(&f.path), f.format);
    sc.pattern = f.pattern.clone();
    sc.follow = f.follow;
    if let Some(p) = f.poll_interval {
        sc.poll_interval = p;
    }
    if let Some(p) = loaded.config.steps.iter().find_map(|s| match s {
        StepConfig::Parse(p) if p.format == ParseFormat::Csv => Some(p),
        _ => None,
    }) {
        sc.csv = csv_dialect(p);
    }
    if let Some(m) = loaded.config.errors.max_record_bytes {
        sc.max_record_bytes = m;
    }
    sc
}

/// Checks the whole file and builds the steps. Returns every problem found.
pub fn build(loaded: &Loaded, options: impl FnOnce(&mut Options)) -> Result<DeclaredPipeline, ConfigErrors> {
    build_variant(loaded, Variant::default(), options)
}

/// A variant of a pipeline file's pipeline, for replays: another source, its own output file
/// names and checkpoints, and optionally no steps, straight into one sink.
#[derive(Debug, Default)]
pub struct Variant {
    /// Read from this source instead of the file's.
    pub source: Option<AnySource>,
    /// Prefix of every output file (sinks and dead letters), so that the variant's epochs
    /// never mix with the pipeline's own.
    pub file_prefix: Option<String>,
    /// Checkpoint here instead of the file's checkpoint directory.
    pub state_dir: Option<PathBuf>,
    /// Skip the steps: records go as they are to this sink.
    pub only_sink: Option<String>,
    /// Write each file sink (by name) and the dead letters (`dead_letters`) to these
    /// directories instead of their configured paths (batch ingestion stages each input
    /// file's output this way).
    pub outputs: Option<std::collections::HashMap<String, PathBuf>>,
}

type Outputs = std::collections::HashMap<String, PathBuf>;

/// The smallest `max_file_bytes` a declared file sink accepts.
const MIN_FILE_BYTES: u64 = 4 << 10;

/// Builds a [`Variant`] of the pipeline of `loaded`.
pub fn build_variant(
    loaded: &Loaded,
    variant: Variant,
    options: impl FnOnce(&mut Options),
) -> Result<DeclaredPipeline, ConfigErrors> {
    let cfg = &loaded.config;
    let mut errors = Errors::new(&loaded.path, &loaded.text);

    if cfg.name.trim().is_empty() {
        errors.add(&KeyPath::key("name"), "the pipeline needs a name");
    }

    // sinks
    let mut sink_names = BTreeSet::new();
    if cfg.sinks.is_empty() {
        errors.add(&KeyPath::key("sinks"), "at least one [[sinks]] table is needed");
    }
    for (i, s) in cfg.sinks.iter().enumerate() {
        let at = KeyPath::key("sinks").i(i);
        if !sink_names.insert(s.name().to_owned()) {
            errors.add(&at.k("name"), format!("two sinks are named `{}`", s.name()));
        }
        if s.name() == "dead_letters" {
            errors.add(&at.k("name"), "`dead_letters` is reserved for the dead-letter output");
        }
        let key = match s {
            SinkConfig::Kafka(k) => k.key.as_deref(),
            SinkConfig::Nats(n) => n.key.as_deref(),
            SinkConfig::RedisStream(r) => r.key.as_deref(),
            _ => None,
        };
        if key.is_some_and(|f| f.is_empty() || f.contains('.')) {
            errors.add(&at.k("key"), "a top-level field name of the output records");
        }
        if let SinkConfig::Nats(n) = s {
            if let Some(why) = crate::nats::unavailable() {
                errors.add(&at.k("type"), why);
            }
            check_url(&mut errors, &at.k("url"), &n.url, "nats");
            if n.subject.trim().is_empty() || n.subject.contains(['*', '>', ' ']) {
                errors.add(
                    &at.k("subject"),
                    "a subject to publish to, without wildcards, like \"orders.out\"",
                );
            }
        }
        if let SinkConfig::Postgres(p) = s {
            if let Some(why) = crate::postgres::unavailable() {
                errors.add(&at.k("type"), why);
            }
            if !p.url.starts_with("postgres://") && !p.url.starts_with("postgresql://") && !p.url.contains("host=") {
                errors.add(
                    &at.k("url"),
                    "a postgres:// URL, like \"postgres://keel@127.0.0.1:5432/db\"",
                );
            }
            if p.table.trim().is_empty() {
                errors.add(&at.k("table"), "the table to write to (`table` or `schema.table`)");
            }
            if p.rows_per_statement == Some(0) {
                errors.add(&at.k("rows_per_statement"), "at least 1 row per statement");
            }
            if let Some(k) = p
                .upsert_key
                .iter()
                .find(|k| !p.columns.is_empty() && !p.columns.contains_key(*k))
            {
                errors.add(&at.k("upsert_key"), format!("`{k}` is not one of the mapped columns"));
            }
        }
        if let SinkConfig::RedisStream(r) = s {
            if let Some(why) = crate::redis_stream::unavailable() {
                errors.add(&at.k("type"), why);
            }
            check_url(&mut errors, &at.k("url"), &r.url, "redis");
            if r.stream.trim().is_empty() {
                errors.add(&at.k("stream"), "the stream key to append to");
            }
            if r.chunk == Some(0) {
                errors.add(&at.k("chunk"), "at least 1 entry per append");
            }
        }
        if let SinkConfig::Kafka(k) = s {
            if let Some(why) = crate::kafka::unavailable() {
                errors.add(&at.k("type"), why);
            }
            if k.brokers.trim().is_empty() {
                errors.add(&at.k("brokers"), "the brokers to connect to, like \"127.0.0.1:9092\"");
            }
            if k.topic_field
                .as_deref()
                .is_some_and(|f| f.is_empty() || f.contains('.'))
            {
                errors.add(&at.k("topic_field"), "a top-level field name of the output records");
            }
            if k.transactional_id.is_some() && !k.transactional {
                errors.add(
                    &at.k("transactional_id"),
                    "`transactional_id` needs `transactional = true`",
                );
            }
        }
        let formatted = match s {
            SinkConfig::Files(f) => Some((f.format, &f.columns, f.neutralize_formulas)),
            SinkConfig::S3(f) => Some((f.format, &f.columns, f.neutralize_formulas)),
            _ => None,
        };
        if let Some((format, columns, neutralize)) = formatted {
            match (format, columns) {
                (FileFormat::Csv, None) => errors.add(&at.k("columns"), "a CSV sink needs `columns`"),
                (FileFormat::Lines, _) => errors.add(&at.k("format"), "sinks write `json_lines` or `csv`"),
                (FileFormat::JsonLines, Some(_)) => errors.add(&at.k("columns"), "`columns` is for CSV sinks"),
                (FileFormat::JsonLines, None) if neutralize => {
                    errors.add(&at.k("neutralize_formulas"), "`neutralize_formulas` is for CSV sinks")
                }
                _ => {}
            }
        }
        if let SinkConfig::Delta(d) = s {
            if let Some(why) = crate::delta::unavailable() {
                errors.add(&at.k("type"), why);
            }
            if d.table.trim().is_empty() {
                errors.add(&at.k("table"), "a local directory or s3://bucket/path");
            }
            for (column, ty) in &d.columns {
                if let Err(e) = crate::delta::check_column_type(ty) {
                    errors.add(&at.k("columns").k(column), e);
                }
            }
        }
        if let SinkConfig::S3(s3) = s {
            if let Some(why) = crate::s3::unavailable() {
                errors.add(&at.k("type"), why);
            }
            if s3.bucket.trim().is_empty() {
                errors.add(&at.k("bucket"), "the bucket to write to");
            }
            if s3.max_file_bytes.is_some_and(|m| m < MIN_FILE_BYTES) {
                errors.add(&at.k("max_file_bytes"), format!("at least {MIN_FILE_BYTES} bytes"));
            }
        }
        if let SinkConfig::Files(f) = s {
            if f.max_file_bytes.is_some_and(|m| m < MIN_FILE_BYTES) {
                errors.add(
                    &at.k("max_file_bytes"),
                    format!("must be at least {MIN_FILE_BYTES} (4 KiB): each file of an epoch costs a rename and an fsync at its commit"),
                );
            }
        }
    }
    if let Some(d) = &cfg.dead_letter {
        check_dead_letter(&mut errors, d, cfg.ingest.is_some());
    }
    crate::notify::check(&mut errors, &cfg.notify);
    if let Some(m) = cfg.dead_letter.as_ref().and_then(|d| d.max_segment_bytes)
        && m < MIN_FILE_BYTES
    {
        errors.add(
            &KeyPath::key("dead_letter").k("max_segment_bytes"),
            format!("must be at least {MIN_FILE_BYTES} (4 KiB)"),
        );
    }
    let main_sink = cfg.sinks.first().map(|s| s.name().to_owned()).unwrap_or_default();

    // steps
    let mut steps: Vec<(Arc<str>, Box<dyn DocStep>)> = Vec::new();
    let mut parsed = false;
    let mut watermarks = WatermarkConfig::default();
    let mut seen_event_time = false;
    let mut tables = BTreeSet::new();
    for (i, step) in cfg.steps.iter().enumerate() {
        let at = KeyPath::key("steps").i(i);
        let name: Arc<str> = step.given_name().unwrap_or(step.kind()).into();
        if !matches!(step, StepConfig::Parse(_)) && !parsed {
            errors.add(
                &at.k("type"),
                format!(
                    "a `{}` step needs parsed records: put a `parse` step before it",
                    step.kind()
                ),
            );
        }
        let built: Option<Box<dyn DocStep>> = match step {
            StepConfig::Parse(p) => {
                if parsed {
                    errors.add(&at.k("type"), "records are already parsed");
                }
                parsed = true;
                match p.format {
                    ParseFormat::Json => {
                        if p.delimiter.is_some()
                            || p.quote.is_some()
                            || p.escape.is_some()
                            || p.infer_types
                            || p.columns.is_some()
                            || p.header.is_some()
                            || p.empty_fields.is_some()
                        {
                            errors.add(
                                &at,
                                "`delimiter`, `quote`, `escape`, `infer_types`, `columns`, `header` and \
                                 `empty_fields` are for `format = \"csv\"`",
                            );
                        }
                        Some(Box::new(ParseJson))
                    }
                    ParseFormat::Csv => {
                        if let Err((key, m)) = check_dialect(p) {
                            errors.add(&at.k(key), m);
                        }
                        if p.header == Some(false) && p.columns.is_none() {
                            errors.add(&at.k("columns"), "files without a header line need `columns`");
                        }
                        let empty = p.empty_fields.unwrap_or(if p.infer_types {
                            EmptyFields::Null
                        } else {
                            EmptyFields::String
                        });
                        Some(Box::new(ParseCsv::new(
                            csv_dialect(p),
                            p.infer_types,
                            empty,
                            p.columns.clone(),
                        )))
                    }
                }
            }
            StepConfig::Validate(v) => {
                build_validate(loaded, &mut errors, &at, v).map(|v| Box::new(v) as Box<dyn DocStep>)
            }
            StepConfig::Transform(j) | StepConfig::Filter(j) => match JqProgram::compile(&j.jq) {
                Ok(p) => {
                    let p = Arc::new(p);
                    Some(if matches!(step, StepConfig::Filter(_)) {
                        Box::new(JqFilter(p)) as Box<dyn DocStep>
                    } else {
                        Box::new(JqTransform(p))
                    })
                }
                Err(e) => {
                    errors.add(&at.k("jq"), format!("jq program does not compile: {e}"));
                    None
                }
            },
            StepConfig::Select(f) => Some(Box::new(Select::new(f.fields.clone()))),
            StepConfig::Drop(f) => Some(Box::new(DropFields(f.fields.clone().into()))),
            StepConfig::Rename(r) => Some(Box::new(Rename(
                r.fields.clone().into_iter().collect::<Vec<_>>().into(),
            ))),
            StepConfig::EventTime(e) => {
                if seen_event_time {
                    errors.add(&at, "only one `event_time` step is allowed");
                }
                seen_event_time = true;
                watermarks = WatermarkConfig {
                    lateness: e.lateness.unwrap_or(watermarks.lateness),
                    idle_timeout: e.idle_timeout.unwrap_or(watermarks.idle_timeout),
                    late: e.late,
                    max_future_skew: match e.max_future_skew {
                        Some(d) if d.is_zero() => None,
                        Some(d) => Some(d),
                        None => watermarks.max_future_skew,
                    },
                };
                field(&mut errors, &at.k("field"), &e.field)
                    .map(|f| Box::new(EventTimeStep::new(f, e.unit)) as Box<dyn DocStep>)
            }
            StepConfig::Aggregate(a) => {
                let table = a.name.clone().unwrap_or_else(|| "aggregate".into());
                if !tables.insert(table.clone()) {
                    errors.add(
                        &at.k("name"),
                        format!("two stateful steps use the state table `{table}`: give one a `name`"),
                    );
                }
                build_aggregate(cfg, &mut errors, &at, a, &table, &main_sink).map(|a| Box::new(a) as Box<dyn DocStep>)
            }
            StepConfig::Dedupe(d) => {
                let table = d.name.clone().unwrap_or_else(|| "dedupe".into());
                if !tables.insert(table.clone()) {
                    errors.add(
                        &at.k("name"),
                        format!("two stateful steps use the state table `{table}`: give one a `name`"),
                    );
                }
                if d.window.is_zero() {
                    errors.add(&at.k("window"), "the window must be positive");
                }
                field(&mut errors, &at.k("key"), &d.key)
                    .map(|k| Box::new(Dedupe::new(&table, k, d.window, d.on_duplicate)) as Box<dyn DocStep>)
            }
        };
        if let Some(b) = built {
            steps.push((name, b));
        }
    }

    // dead letters
    let id_field = cfg
        .dead_letter
        .as_ref()
        .and_then(|d| d.id_field.clone())
        .map(Arc::<str>::from);

    // source
    let source = match &cfg.source {
        SourceConfig::Files(f) => AnySource::Files(FileSource::new(files_source(loaded, f))),
        SourceConfig::Kafka(k) => match crate::kafka::source(k).map(AnySource::from) {
            Ok(s) => s,
            Err(e) => {
                errors.add(&KeyPath::key("source"), e);
                AnySource::Memory(keel::source::MemorySource::new("unusable kafka source", Vec::new()))
            }
        },
        #[cfg(feature = "nats")]
        SourceConfig::Nats(n) => match crate::nats::source(n) {
            Ok(s) => AnySource::Nats(s),
            Err(e) => {
                errors.add(&KeyPath::key("source"), e);
                AnySource::Memory(keel::source::MemorySource::new("unusable nats source", Vec::new()))
            }
        },
        #[cfg(feature = "redis")]
        SourceConfig::RedisStream(r) => match crate::redis_stream::source(r) {
            Ok(s) => AnySource::RedisStream(s),
            Err(e) => {
                errors.add(&KeyPath::key("source"), e);
                AnySource::Memory(keel::source::MemorySource::new("unusable redis source", Vec::new()))
            }
        },
        #[cfg(not(all(feature = "nats", feature = "redis")))]
        SourceConfig::Nats(_) | SourceConfig::RedisStream(_) => {
            let why = match &cfg.source {
                SourceConfig::Nats(_) => crate::nats::unavailable(),
                _ => crate::redis_stream::unavailable(),
            };
            errors.add(&KeyPath::key("source").k("type"), why.unwrap_or("not built"));
            AnySource::Memory(keel::source::MemorySource::new("unusable source", Vec::new()))
        }
        SourceConfig::Generator(g) => {
            let gc = GeneratorConfig {
                partitions: g.partitions,
                records: g.records,
                rate: g.rate,
                seed: g.seed,
                customers: g.customers,
                bad_fraction: g.bad_fraction,
                ..GeneratorConfig::default()
            };
            match GeneratorSource::new(gc) {
                Ok(s) => AnySource::Generator(s),
                Err(e) => {
                    errors.add(&KeyPath::key("source"), e.to_string());
                    AnySource::Generator(GeneratorSource::new(GeneratorConfig::default()).map_err(|e| {
                        ConfigErrors(vec![ConfigError {
                            file: loaded.path.clone(),
                            line: None,
                            key: None,
                            message: e.to_string(),
                        }])
                    })?)
                }
            }
        }
    };

    if cfg.checkpoint.retain == 0 {
        errors.add(&KeyPath::key("checkpoint").k("retain"), "keep at least one checkpoint");
    }
    if cfg.run.batch_size == Some(0) {
        errors.add(&KeyPath::key("run").k("batch_size"), "must be at least 1");
    }
    if cfg.run.max_open_partitions == Some(0) {
        errors.add(&KeyPath::key("run").k("max_open_partitions"), "must be at least 1");
    }
    if cfg.run.max_records_per_second == Some(0) {
        errors.add(&KeyPath::key("run").k("max_records_per_second"), "must be at least 1");
    }
    let mut known_stages: BTreeSet<String> = cfg
        .steps
        .iter()
        .map(|s| s.given_name().unwrap_or(s.kind()).to_owned())
        .chain(cfg.sinks.iter().map(|s| s.name().to_owned()))
        .collect();
    known_stages.extend(["source", "flow", "dead_letters"].map(String::from));
    let policies = build_policies(&cfg.errors, &known_stages, &mut errors);
    if !errors.list.is_empty() {
        return Err(ConfigErrors(errors.list));
    }

    let mut opts = Options {
        policies,
        checkpoint_interval: cfg.checkpoint.interval,
        retain: cfg.checkpoint.retain,
        watermarks,
        fingerprint: loaded.fingerprint(),
        ..Options::default()
    };
    if let Some(b) = cfg.run.batch_size {
        opts.batch_size = b;
    }
    if let Some(m) = cfg.run.max_open_partitions {
        opts.max_open_partitions = m;
    }
    opts.max_records_per_second = cfg.run.max_records_per_second;
    options(&mut opts);

    let steps = if variant.only_sink.is_some() { Vec::new() } else { steps };
    let state_dir = variant.state_dir.clone().unwrap_or_else(|| loaded.state_dir());
    let chain = DocChain::new(steps, id_field);
    let builder = Pipeline::builder(cfg.name.clone())
        .source(variant.source.unwrap_or(source))
        .step(chain)
        .checkpoints(FileCheckpointStore::new(state_dir.clone()))
        .options(opts);
    let builder = add_sinks(
        loaded,
        builder,
        variant.file_prefix.as_deref(),
        variant.only_sink.as_deref(),
        variant.outputs.as_ref(),
        &state_dir,
    )?;
    builder.build().map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: loaded.path.clone(),
            line: None,
            key: None,
            message: e.to_string(),
        }])
    })
}

fn file_sink(
    loaded: &Loaded,
    f: &FilesSinkConfig,
    header: Option<String>,
    prefix: Option<&str>,
    outputs: Option<&Outputs>,
) -> FileSink {
    let dir = outputs
        .and_then(|o| o.get(&f.name).cloned())
        .unwrap_or_else(|| loaded.resolve(&f.path));
    let mut c = FileSinkConfig::new(dir, f.format);
    if let Some(p) = &f.prefix {
        c.prefix = p.clone();
    }
    if let Some(p) = prefix {
        c.prefix = format!("{}-{p}", c.prefix);
    }
    if let Some(m) = f.max_file_bytes {
        c.max_file_bytes = m;
    }
    c.header = header;
    FileSink::new(c)
}

/// The Kafka sink of `k`: it stages under the run's checkpoint directory, and a variant
/// (a replay) writes under a writer name of its own, so that its epochs are never taken
/// for the pipeline's.
fn kafka_sink(
    loaded: &Loaded,
    k: &KafkaSinkToml,
    prefix: Option<&str>,
    state_dir: &Path,
) -> Result<impl keel::Sink, ConfigErrors> {
    let writer = staged_name(&k.name, prefix);
    let staging = match &k.staging {
        Some(s) if prefix.is_none() => loaded.resolve(s),
        _ => state_dir.join("kafka").join(&k.name),
    };
    crate::kafka::sink(k, &writer, staging).map_err(|message| {
        ConfigErrors(vec![ConfigError {
            file: loaded.path.clone(),
            line: None,
            key: Some(format!("sinks.{}", k.name)),
            message,
        }])
    })
}

/// The name a sink stages and identifies itself under: a variant (a replay) has its own,
/// so that its epochs are never taken for the pipeline's.
fn staged_name(name: &str, prefix: Option<&str>) -> String {
    match prefix {
        Some(p) => format!("{name}@{p}"),
        None => name.to_owned(),
    }
}

/// Where a message sink stages: its `staging` setting, else under the checkpoint directory.
#[cfg(any(
    feature = "nats",
    feature = "redis",
    feature = "postgres",
    feature = "s3",
    feature = "delta"
))]
fn staging_dir(
    loaded: &Loaded,
    set: Option<&str>,
    kind: &str,
    name: &str,
    prefix: Option<&str>,
    state_dir: &Path,
) -> PathBuf {
    match set {
        Some(s) if prefix.is_none() => loaded.resolve(s),
        _ => state_dir.join(kind).join(staged_name(name, prefix)),
    }
}

#[cfg(feature = "nats")]
fn nats_sink(
    loaded: &Loaded,
    n: &crate::config::NatsSinkToml,
    prefix: Option<&str>,
    state_dir: &Path,
) -> keel_connectors::nats::NatsSink {
    let staging = staging_dir(loaded, n.staging.as_deref(), "nats", &n.name, prefix, state_dir);
    crate::nats::sink(n, &staged_name(&n.name, prefix), staging)
}

#[cfg(feature = "redis")]
fn redis_stream_sink(
    loaded: &Loaded,
    r: &crate::config::RedisStreamSinkToml,
    prefix: Option<&str>,
    state_dir: &Path,
) -> keel_connectors::redis_stream::RedisStreamSink {
    let staging = staging_dir(loaded, r.staging.as_deref(), "redis", &r.name, prefix, state_dir);
    crate::redis_stream::sink(r, &staged_name(&r.name, prefix), staging)
}

#[cfg(feature = "postgres")]
fn postgres_sink(
    loaded: &Loaded,
    p: &crate::config::PostgresSinkToml,
    prefix: Option<&str>,
    state_dir: &Path,
) -> keel_connectors::postgres::PostgresSink {
    let staging = staging_dir(loaded, p.staging.as_deref(), "postgres", &p.name, prefix, state_dir);
    crate::postgres::sink(p, &staged_name(&p.name, prefix), staging)
}

#[cfg(feature = "s3")]
fn s3_sink(
    loaded: &Loaded,
    s: &crate::config::S3SinkToml,
    header: Option<String>,
    prefix: Option<&str>,
    state_dir: &Path,
) -> keel_connectors::s3::S3Sink {
    let staging = staging_dir(loaded, s.staging.as_deref(), "s3", &s.name, prefix, state_dir);
    crate::s3::sink(s, &staged_name(&s.name, prefix), staging, header)
}

/// A Delta table's location: a URL as it is, a path relative to the pipeline file.
#[cfg(feature = "delta")]
fn delta_location(loaded: &Loaded, table: &str) -> String {
    if table.contains("://") {
        table.to_owned()
    } else {
        loaded.resolve(table).display().to_string()
    }
}

#[cfg(feature = "delta")]
fn delta_sink(
    loaded: &Loaded,
    d: &crate::config::DeltaSinkToml,
    prefix: Option<&str>,
    state_dir: &Path,
) -> keel_connectors::delta::DeltaSink {
    let name = staged_name(&d.name, prefix);
    let staging = staging_dir(loaded, d.staging.as_deref(), "delta", &d.name, prefix, state_dir);
    let app_id = match (&d.app_id, prefix) {
        (Some(a), None) => a.clone(),
        _ => format!("keel/{}/{name}", loaded.config.name),
    };
    crate::delta::sink(d, &name, delta_location(loaded, &d.table), app_id, staging)
}

/// The error for a sink whose connector this build does not have (also refused by the
/// checks before, with the feature to enable).
#[allow(dead_code)]
fn not_built(loaded: &Loaded, s: &SinkConfig) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        file: loaded.path.clone(),
        line: None,
        key: Some(format!("sinks.{}", s.name())),
        message: "this keel was built without the connector this sink needs".into(),
    }])
}

/// A URL setting: not empty, with the scheme the connector speaks.
fn check_url(errors: &mut Errors<'_>, at: &KeyPath, url: &str, scheme: &str) {
    let accepted = url.starts_with(&format!("{scheme}://")) || (scheme == "redis" && url.starts_with("rediss://"));
    if !accepted {
        errors.add(
            at,
            format!(
                "a {scheme}:// URL, like \"{scheme}://127.0.0.1:{}\"",
                if scheme == "nats" { 4222 } else { 6379 }
            ),
        );
    }
}

/// The settings of `[dead_letter]` that depend on its type.
fn check_dead_letter(errors: &mut Errors<'_>, d: &DeadLetterConfig, ingest: bool) {
    use DeadLetterKind::{Delta, Files, Kafka, Nats, Postgres, RedisStream, S3};
    let at = KeyPath::key("dead_letter");
    // each type-specific key, with the types it belongs to
    let specific: [(&str, bool, &[DeadLetterKind], &str); 18] = [
        ("brokers", d.brokers.is_some(), &[Kafka], "kafka"),
        ("topic", d.topic.is_some(), &[Kafka], "kafka"),
        ("compression", d.compression.is_some(), &[Kafka], "kafka"),
        ("fallback_after", d.fallback_after.is_some(), &[Kafka], "kafka"),
        ("options", !d.options.is_empty(), &[Kafka], "kafka"),
        (
            "url",
            d.url.is_some(),
            &[Nats, RedisStream, Postgres],
            "nats\", \"redis_stream\" or \"postgres",
        ),
        ("table", d.table.is_some(), &[Postgres, Delta], "postgres\" or \"delta"),
        ("storage_options", !d.storage_options.is_empty(), &[Delta], "delta"),
        ("bucket", d.bucket.is_some(), &[S3], "s3"),
        ("prefix", d.prefix.is_some(), &[S3], "s3"),
        ("endpoint", d.endpoint.is_some(), &[S3], "s3"),
        ("region", d.region.is_some(), &[S3], "s3"),
        ("access_key", d.access_key.is_some(), &[S3], "s3"),
        ("secret_key", d.secret_key.is_some(), &[S3], "s3"),
        ("subject", d.subject.is_some(), &[Nats], "nats"),
        ("stream", d.stream.is_some(), &[RedisStream], "redis_stream"),
        ("fallback", d.fallback.is_some(), &[Files], "files"),
        ("max_segment_bytes", d.max_segment_bytes.is_some(), &[Files], "files"),
    ];
    for (key, set, kinds, names) in specific {
        if set && !kinds.contains(&d.kind) {
            let message = match (key, d.kind) {
                ("fallback", Kafka) => {
                    "with type = \"kafka\", `path` is the fallback directory: remove `fallback`".into()
                }
                _ => format!("`{key}` is for type = \"{names}\""),
            };
            errors.add(&at.k(key), message);
        }
    }
    let mut required = |key: &str, value: Option<&str>, what: &str| {
        if value.is_none_or(|v| v.trim().is_empty()) {
            errors.add(&at.k(key), what);
        }
    };
    match d.kind {
        Files => required("path", Some(&d.path), "the directory of dead-letter files"),
        Kafka => {
            required(
                "path",
                Some(&d.path),
                "the fallback directory for dead letters the topic cannot take",
            );
            required(
                "brokers",
                d.brokers.as_deref(),
                "the brokers to connect to, like \"127.0.0.1:9092\"",
            );
            required(
                "topic",
                d.topic.as_deref(),
                "the dead-letter topic (keel does not create topics)",
            );
        }
        Nats => {
            required("url", d.url.as_deref(), "a nats:// URL, like \"nats://127.0.0.1:4222\"");
            required(
                "subject",
                d.subject.as_deref(),
                "the dead-letter subject (a stream must capture it)",
            );
        }
        RedisStream => {
            required(
                "url",
                d.url.as_deref(),
                "a redis:// URL, like \"redis://127.0.0.1:6379\"",
            );
            required("stream", d.stream.as_deref(), "the dead-letter stream key");
        }
        Postgres => {
            required(
                "url",
                d.url.as_deref(),
                "a postgres:// URL, like \"postgres://keel@127.0.0.1:5432/db\"",
            );
            required(
                "table",
                d.table.as_deref(),
                "the dead-letter table (created if missing)",
            );
        }
        S3 => required("bucket", d.bucket.as_deref(), "the bucket of the dead letters"),
        Delta => required(
            "table",
            d.table.as_deref(),
            "the dead-letter table: a directory or s3://bucket/path",
        ),
    }
    if matches!(d.kind, Nats | RedisStream | Postgres | S3 | Delta) && !d.path.is_empty() {
        errors.add(&at.k("path"), "`path` is for type = \"files\" or \"kafka\"");
    }
    let unavailable = match d.kind {
        Files => None,
        Kafka => crate::kafka::unavailable(),
        Nats => crate::nats::unavailable(),
        RedisStream => crate::redis_stream::unavailable(),
        Postgres => crate::postgres::unavailable(),
        S3 => crate::s3::unavailable(),
        Delta => crate::delta::unavailable(),
    };
    if let Some(why) = unavailable {
        errors.add(&at.k("type"), why);
    }
    if ingest && d.kind != Files {
        errors.add(
            &at.k("type"),
            "batch ingestion writes its dead letters per input file: use type = \"files\" with [ingest]",
        );
    }
}

fn add_sinks(
    loaded: &Loaded,
    builder: PipelineBuilder<AnySource, DocChain, keel::JsonEncoder>,
    prefix: Option<&str>,
    only_sink: Option<&str>,
    outputs: Option<&Outputs>,
    state_dir: &Path,
) -> Result<PipelineBuilder<AnySource, DocChain, DocEncoder>, ConfigErrors> {
    let cfg = &loaded.config;
    let first = match only_sink {
        None => cfg.sinks.first(),
        Some(name) => Some(cfg.sinks.iter().find(|s| s.name() == name).ok_or_else(|| {
            ConfigErrors(vec![ConfigError {
                file: loaded.path.clone(),
                line: None,
                key: Some("sinks".into()),
                message: format!("no sink is named `{name}`"),
            }])
        })?),
    };
    let Some(main) = first else {
        return Err(ConfigErrors(vec![ConfigError {
            file: loaded.path.clone(),
            line: None,
            key: Some("sinks".into()),
            message: "at least one sink is needed".into(),
        }]));
    };
    let (enc, header) = sink_format(main);
    let mut b = match main {
        SinkConfig::Files(f) => builder.sink_with(&f.name, file_sink(loaded, f, header, prefix, outputs), enc),
        SinkConfig::Stdout(s) => builder.sink_with(&s.name, StdoutSink::new(), enc),
        SinkConfig::Kafka(k) => builder.sink_with(&k.name, kafka_sink(loaded, k, prefix, state_dir)?, enc),
        #[cfg(feature = "nats")]
        SinkConfig::Nats(n) => builder.sink_with(&n.name, nats_sink(loaded, n, prefix, state_dir), enc),
        #[cfg(feature = "redis")]
        SinkConfig::RedisStream(r) => builder.sink_with(&r.name, redis_stream_sink(loaded, r, prefix, state_dir), enc),
        #[cfg(feature = "postgres")]
        SinkConfig::Postgres(p) => builder.sink_with(&p.name, postgres_sink(loaded, p, prefix, state_dir), enc),
        #[cfg(feature = "s3")]
        SinkConfig::S3(s) => builder.sink_with(&s.name, s3_sink(loaded, s, header, prefix, state_dir), enc),
        #[cfg(feature = "delta")]
        SinkConfig::Delta(d) => builder.sink_with(&d.name, delta_sink(loaded, d, prefix, state_dir), enc),
        #[allow(unreachable_patterns)]
        other => return Err(not_built(loaded, other)),
    };
    let sides = if only_sink.is_some() { &[][..] } else { &cfg.sinks[1..] };
    for s in sides {
        let (_, header) = sink_format(s);
        b = match s {
            SinkConfig::Files(f) => b.side_sink(&f.name, file_sink(loaded, f, header, prefix, outputs)),
            SinkConfig::Stdout(o) => b.side_sink(&o.name, StdoutSink::new()),
            SinkConfig::Kafka(k) => b.side_sink(&k.name, kafka_sink(loaded, k, prefix, state_dir)?),
            #[cfg(feature = "nats")]
            SinkConfig::Nats(n) => b.side_sink(&n.name, nats_sink(loaded, n, prefix, state_dir)),
            #[cfg(feature = "redis")]
            SinkConfig::RedisStream(r) => b.side_sink(&r.name, redis_stream_sink(loaded, r, prefix, state_dir)),
            #[cfg(feature = "postgres")]
            SinkConfig::Postgres(p) => b.side_sink(&p.name, postgres_sink(loaded, p, prefix, state_dir)),
            #[cfg(feature = "s3")]
            SinkConfig::S3(s) => b.side_sink(&s.name, s3_sink(loaded, s, header, prefix, state_dir)),
            #[cfg(feature = "delta")]
            SinkConfig::Delta(d) => b.side_sink(&d.name, delta_sink(loaded, d, prefix, state_dir)),
            #[allow(unreachable_patterns)]
            other => return Err(not_built(loaded, other)),
        };
    }
    if let Some(d) = &cfg.dead_letter
        && d.kind == DeadLetterKind::Kafka
    {
        let fallback = loaded.resolve(&d.path);
        let staging = state_dir.join("kafka").join("dead_letters");
        let sink = crate::kafka::dead_letter_sink(d, staging, fallback).map_err(|message| {
            ConfigErrors(vec![ConfigError {
                file: loaded.path.clone(),
                line: None,
                key: Some("dead_letter".into()),
                message,
            }])
        })?;
        return Ok(b.dead_letters(sink));
    }
    #[cfg(feature = "nats")]
    if let Some(d) = &cfg.dead_letter
        && d.kind == DeadLetterKind::Nats
    {
        let staging = state_dir.join("nats").join(staged_name("dead_letters", prefix));
        return Ok(b.dead_letters(crate::nats::dead_letter_sink(d, staging)));
    }
    #[cfg(feature = "redis")]
    if let Some(d) = &cfg.dead_letter
        && d.kind == DeadLetterKind::RedisStream
    {
        let staging = state_dir.join("redis").join(staged_name("dead_letters", prefix));
        return Ok(b.dead_letters(crate::redis_stream::dead_letter_sink(d, staging)));
    }
    #[cfg(feature = "delta")]
    if let Some(d) = &cfg.dead_letter
        && d.kind == DeadLetterKind::Delta
    {
        let name = staged_name("dead_letters", prefix);
        let staging = state_dir.join("delta").join(&name);
        let location = delta_location(loaded, d.table.as_deref().unwrap_or_default());
        let app_id = format!("keel/{}/{name}", cfg.name);
        return Ok(b.dead_letters(crate::delta::dead_letter_sink(d, location, app_id, staging)));
    }
    #[cfg(feature = "s3")]
    if let Some(d) = &cfg.dead_letter
        && d.kind == DeadLetterKind::S3
    {
        let staging = state_dir.join("s3").join(staged_name("dead_letters", prefix));
        return Ok(b.dead_letters(crate::s3::dead_letter_sink(d, staging)));
    }
    #[cfg(feature = "postgres")]
    if let Some(d) = &cfg.dead_letter
        && d.kind == DeadLetterKind::Postgres
    {
        let staging = state_dir.join("postgres").join(staged_name("dead_letters", prefix));
        return Ok(b.dead_letters(crate::postgres::dead_letter_sink(d, staging)));
    }
    if let Some(d) = &cfg.dead_letter
        && matches!(d.kind, DeadLetterKind::Files | DeadLetterKind::Kafka)
    {
        let segments = |path: &str| {
            let dir = outputs
                .and_then(|o| o.get("dead_letters").cloned())
                .unwrap_or_else(|| loaded.resolve(path));
            let mut c = FileSinkConfig::dead_letters(dir);
            if let Some(p) = prefix {
                c.prefix = format!("dead-{p}");
            }
            if let Some(m) = d.max_segment_bytes {
                c.max_file_bytes = m;
            }
            FileSink::new(c)
        };
        b = b.dead_letters(segments(&d.path));
        if let Some(f) = &d.fallback {
            b = b.dead_letter_fallback(segments(f));
        }
    }
    Ok(b)
}

fn build_validate(loaded: &Loaded, errors: &mut Errors<'_>, at: &KeyPath, v: &ValidateConfig) -> Option<Validate> {
    let mut ok = true;
    let mut required = Vec::new();
    for (j, r) in v.required.iter().enumerate() {
        match field(errors, &at.k("required").i(j), r) {
            Some(f) => required.push(f),
            None => ok = false,
        }
    }
    let mut types = Vec::new();
    for (k, t) in &v.types {
        match field(errors, &at.k("types").k(k), k) {
            Some(f) => types.push((f, *t)),
            None => ok = false,
        }
    }
    let mut rules = Vec::new();
    for (j, r) in v.rules.iter().enumerate() {
        let rat = at.k("rules").i(j);
        if !is_snake_case(&r.reason) {
            errors.add(
                &rat.k("reason"),
                format!("`{}` is not a snake_case reason (like `negative_amount`)", r.reason),
            );
            ok = false;
        }
        let pattern = match &r.pattern {
            None => None,
            Some(p) => match regex::Regex::new(&format!("^(?:{p})$")) {
                Ok(re) => Some(re),
                Err(e) => {
                    errors.add(&rat.k("pattern"), format!("invalid regular expression: {e}"));
                    ok = false;
                    None
                }
            },
        };
        if r.min.is_none()
            && r.max.is_none()
            && r.min_length.is_none()
            && r.max_length.is_none()
            && r.pattern.is_none()
            && r.one_of.is_none()
        {
            errors.add(
                &rat,
                "a rule needs at least one of min, max, min_length, max_length, pattern, one_of",
            );
            ok = false;
        }
        let one_of = r.one_of.as_ref().map(|vals| {
            vals.iter()
                .map(|v| serde_json::to_value(v).unwrap_or(serde_json::Value::Null))
                .collect::<Vec<_>>()
        });
        let Some(f) = field(errors, &rat.k("field"), &r.field) else {
            ok = false;
            continue;
        };
        rules.push(Rule {
            field: f,
            reason: r.reason.as_str().into(),
            min: r.min,
            max: r.max,
            min_length: r.min_length,
            max_length: r.max_length,
            pattern,
            one_of,
            message: r.message.clone(),
        });
    }
    let schema = match &v.schema {
        None => None,
        Some(p) => {
            let path = loaded.resolve(p);
            let loaded_schema = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|t| {
                    serde_json::from_str::<serde_json::Value>(&t)
                        .map_err(|e| format!("{} is not JSON: {e}", path.display()))
                })
                .and_then(|s| {
                    jsonschema::validator_for(&s)
                        .map_err(|e| format!("{} is not a valid JSON Schema: {e}", path.display()))
                });
            match loaded_schema {
                Ok(s) => Some(s),
                Err(e) => {
                    errors.add(&at.k("schema"), e);
                    ok = false;
                    None
                }
            }
        }
    };
    ok.then(|| Validate::new(required, types, rules, schema))
}

fn build_aggregate(
    cfg: &PipelineConfig,
    errors: &mut Errors<'_>,
    at: &KeyPath,
    a: &AggregateConfig,
    table: &str,
    main_sink: &str,
) -> Option<Aggregate> {
    let key = field(errors, &at.k("key"), &a.key)?;
    if a.aggregates.is_empty() {
        errors.add(
            &at.k("aggregates"),
            "name at least one aggregate, like `total = \"sum(amount)\"`",
        );
        return None;
    }
    let mut specs = Vec::new();
    for (name, text) in &a.aggregates {
        match Func::parse(text) {
            Ok(func) => specs.push(AggregateSpec {
                name: name.as_str().into(),
                func,
            }),
            Err(e) => errors.add(&at.k("aggregates").k(name), e),
        }
    }
    if specs.len() != a.aggregates.len() {
        return None;
    }
    let final_output = match &a.final_output {
        None => None,
        Some(f) => {
            let fat = at.k("final");
            let Some(sink) = cfg.sinks.iter().find(|s| s.name() == f.sink) else {
                errors.add(&fat.k("sink"), format!("no sink is named `{}`", f.sink));
                return None;
            };
            if f.sink == main_sink {
                errors.add(
                    &fat.k("sink"),
                    format!(
                        "`{}` is the main output; final results need a sink of their own",
                        f.sink
                    ),
                );
                return None;
            }
            let key_name = a.key.rsplit('.').next().unwrap_or(&a.key).to_owned();
            let fields: Vec<(String, Option<usize>)> = match &f.fields {
                None => std::iter::once((key_name, None))
                    .chain(specs.iter().enumerate().map(|(i, s)| (s.name.to_string(), Some(i))))
                    .collect(),
                Some(m) => {
                    let mut out = Vec::new();
                    for (out_name, what) in m {
                        if what == "key" {
                            out.push((out_name.clone(), None));
                        } else if let Some(i) = specs.iter().position(|s| &*s.name == what) {
                            out.push((out_name.clone(), Some(i)));
                        } else {
                            errors.add(
                                &fat.k("fields").k(out_name),
                                format!("`{what}` is neither `key` nor an aggregate of this step"),
                            );
                            return None;
                        }
                    }
                    out
                }
            };
            Some(FinalOutput {
                sink: f.sink.clone(),
                fields,
                encoder: sink_format(sink).0,
            })
        }
    };
    if !a.emit && final_output.is_none() {
        errors.add(
            &at.k("emit"),
            "with `emit = false` and no `final`, this step has no effect",
        );
    }
    Some(Aggregate::new(table, key, specs, a.emit, final_output))
}

fn retry_policy(r: &RetryConfig) -> Result<RetryPolicy, String> {
    let d = RetryPolicy::default();
    let backoff = match r.backoff.as_deref().unwrap_or("exponential") {
        "exponential" => {
            if r.delay.is_some() {
                return Err("`delay` is for `backoff = \"constant\"`".into());
            }
            Backoff::Exponential {
                initial: r.initial.unwrap_or(Duration::from_millis(100)),
                multiplier: r.multiplier.unwrap_or(2.0),
                max_delay: r.max_delay.unwrap_or(Duration::from_secs(10)),
            }
        }
        "constant" => {
            if r.initial.is_some() || r.multiplier.is_some() || r.max_delay.is_some() {
                return Err("`initial`, `multiplier` and `max_delay` are for `backoff = \"exponential\"`".into());
            }
            Backoff::Constant {
                delay: r.delay.ok_or("a constant backoff needs `delay`")?,
            }
        }
        other => return Err(format!("unknown backoff `{other}` (exponential, constant)")),
    };
    RetryPolicy::new(
        backoff,
        r.jitter.unwrap_or(Jitter::Full),
        r.max_attempts.unwrap_or(d.max_attempts()),
        r.max_elapsed.or(Some(Duration::from_secs(60))),
    )
    .map_err(|e| e.to_string())
}

/// The keel action of an action setting; `nested` for `then`, which must be terminal.
fn action(c: &ActionConfig, at: &KeyPath, errors: &mut Errors<'_>, nested: bool) -> Option<Action> {
    let (name, table) = match c {
        ActionConfig::Name(n) => (n.as_str(), None),
        ActionConfig::Table(t) => (t.action.as_str(), Some(t.as_ref())),
    };
    let then = |errors: &mut Errors<'_>| -> Option<Box<Action>> {
        match table.and_then(|t| t.then.as_ref()) {
            None => Some(Box::new(Action::DeadLetter)),
            Some(t) => action(t, &at.k("then"), errors, true).map(Box::new),
        }
    };
    let a = match name {
        "fail" | "skip" | "dead_letter" | "abort" => {
            if let Some(t) = table
                && (t.retry() != RetryConfig::default()
                    || t.duration.is_some()
                    || t.max_pauses.is_some()
                    || t.then.is_some())
            {
                errors.add(at, format!("`{name}` takes no settings"));
            }
            match name {
                "fail" => Action::Fail,
                "skip" => Action::Skip,
                "dead_letter" => Action::DeadLetter,
                _ => Action::Abort,
            }
        }
        "retry" | "pause" if nested => {
            errors.add(
                at,
                format!("`then` must be fail, skip, dead_letter or abort, not `{name}`"),
            );
            return None;
        }
        "retry" => {
            if table.is_some_and(|t| t.duration.is_some() || t.max_pauses.is_some()) {
                errors.add(at, "`duration` and `max_pauses` are for `pause`");
            }
            let policy = match retry_policy(&table.map(ActionTable::retry).unwrap_or_default()) {
                Ok(p) => p,
                Err(e) => {
                    errors.add(at, e);
                    return None;
                }
            };
            Action::Retry {
                policy,
                then: then(errors)?,
            }
        }
        "pause" => {
            if table.is_some_and(|t| t.retry() != RetryConfig::default()) {
                errors.add(at, "retry settings are for `retry`");
            }
            Action::Pause {
                duration: table.and_then(|t| t.duration).unwrap_or(Duration::from_secs(1)),
                max_pauses: table.and_then(|t| t.max_pauses).unwrap_or(10),
                then: then(errors)?,
            }
        }
        other => {
            errors.add(
                at,
                format!("unknown action `{other}` (fail, skip, retry, dead_letter, pause, abort)"),
            );
            return None;
        }
    };
    Some(a)
}

fn class_actions(base: &ClassActions, c: &ClassActionsConfig, at: &KeyPath, errors: &mut Errors<'_>) -> ClassActions {
    let mut out = base.clone();
    for (class, name, cfg) in [
        (Class::Transient, "transient", &c.transient),
        (Class::Throttled, "throttled", &c.throttled),
        (Class::Permanent, "permanent", &c.permanent),
        (Class::Fatal, "fatal", &c.fatal),
    ] {
        if let Some(cfg) = cfg
            && let Some(a) = action(cfg, &at.k(name), errors, false)
        {
            out.set(class, a);
        }
    }
    out
}

/// The failure policies of `[errors]`.
fn build_policies(cfg: &ErrorsConfig, stages: &BTreeSet<String>, errors: &mut Errors<'_>) -> Policies {
    let at = KeyPath::key("errors");
    let mut p = Policies {
        default: class_actions(&ClassActions::default(), &cfg.default, &at.k("default"), errors),
        ..Policies::default()
    };
    for (stage, c) in &cfg.stages {
        if !stages.contains(stage) {
            let known = stages.iter().cloned().collect::<Vec<_>>().join(", ");
            errors.add(
                &at.k("stages").k(stage),
                format!("no step or sink is named `{stage}` (known: {known})"),
            );
        }
        let actions = class_actions(&p.default, c, &at.k("stages").k(stage), errors);
        p.stages.insert(stage.clone(), actions);
    }
    let mut rules = Vec::new();
    for (i, r) in cfg.classify.iter().enumerate() {
        if let Some(name) = &r.rename
            && !is_snake_case(name)
        {
            errors.add(
                &at.k("classify").i(i).k("as"),
                format!("`{name}` is not a snake_case reason"),
            );
        }
        rules.push(ClassifyRule {
            reason: r.reason.clone(),
            stage: r.stage.clone(),
            status: r.status.clone(),
            message: r.message.clone(),
            class: r.class,
            rename: r.rename.clone(),
            retry_after_ms: r.retry_after,
        });
    }
    p.classifier = Classifier::new(rules);
    if let Some(b) = &cfg.retry_budget {
        p.budget = (b.enabled != Some(false)).then(|| {
            RetryBudget::new(
                b.ratio.unwrap_or(0.2),
                b.min_per_sec.unwrap_or(10.0),
                b.window.unwrap_or(Duration::from_secs(10)),
            )
        });
    }
    if let Some(e) = &cfg.error_budget {
        if e.max_percent.is_none() && e.max_count.is_none() {
            errors.add(&at.k("error_budget"), "set `max_percent` or `max_count`");
        }
        if e.max_percent.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
            errors.add(&at.k("error_budget").k("max_percent"), "must be between 0 and 100");
        }
        p.error_budget = Some(ErrorBudget {
            max_ratio: e.max_percent.map(|p| p / 100.0),
            max_count: e.max_count,
            window: e.window.unwrap_or(Duration::from_secs(60)),
            min_records: e.min_records.unwrap_or(100),
            action: e.action.unwrap_or(BudgetAction::Abort),
        });
    }
    if let Some(b) = &cfg.sink_breaker {
        let d = BreakerConfig::default();
        if b.failure_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            errors.add(&at.k("sink_breaker").k("failure_rate"), "must be between 0 and 1");
        }
        p.sink_breaker = (b.enabled != Some(false)).then(|| BreakerConfig {
            failures: b.failures.unwrap_or(d.failures),
            failure_rate: b.failure_rate,
            min_calls: b.min_calls.unwrap_or(d.min_calls),
            window: b.window.unwrap_or(d.window),
            slow_call: b.slow_call,
            open_for: b.open_for.unwrap_or(d.open_for),
            probes: b.probes.unwrap_or(d.probes),
        });
    }
    if let Some(r) = &cfg.sink_retry {
        match retry_policy(r) {
            Ok(policy) => p.sink_retry = policy,
            Err(e) => errors.add(&at.k("sink_retry"), e),
        }
    }
    if cfg.dead_letter_rate.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
        errors.add(
            &at.k("dead_letter_rate"),
            "must be a positive number of dead letters per second",
        );
    }
    p.max_record_bytes = cfg.max_record_bytes;
    p.dead_letter_rate = cfg.dead_letter_rate;
    p
}
