//! The progress line on a terminal, and periodic progress logs otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keel::Progress;

/// Prints progress until stopped.
pub struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    tty: bool,
}

/// `1234567` as `1.23M`.
pub fn human(n: f64) -> String {
    match n {
        x if x >= 1e9 => format!("{:.2}G", x / 1e9),
        x if x >= 1e6 => format!("{:.2}M", x / 1e6),
        x if x >= 1e4 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

impl Reporter {
    /// Starts reporting `progress`: a redrawn line on a terminal, a log line every 10 s
    /// otherwise, nothing when `quiet`.
    pub fn start(progress: Arc<Progress>, quiet: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tty = std::io::stderr().is_terminal();
        if quiet {
            return Reporter {
                stop,
                thread: None,
                tty,
            };
        }
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("keel-progress".into())
            .spawn(move || {
                let started = Instant::now();
                let (mut last_n, mut last_t) = (0u64, Instant::now());
                let mut last_log = Instant::now();
                let tick = if tty {
                    Duration::from_millis(250)
                } else {
                    Duration::from_millis(500)
                };
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    let p = progress.snapshot();
                    let dt = last_t.elapsed().as_secs_f64().max(1e-3);
                    let rate = (p.records_in.saturating_sub(last_n)) as f64 / dt;
                    (last_n, last_t) = (p.records_in, Instant::now());
                    let ckpt = if p.last_checkpoint == 0 {
                        "none yet".to_string()
                    } else {
                        let age = keel::util::now_ms().saturating_sub(p.last_checkpoint_ms) as f64 / 1000.0;
                        format!("#{} {age:.1}s ago", p.last_checkpoint)
                    };
                    let lag = p
                        .source_lag
                        .map_or(String::new(), |l| format!("  lag {}", human(l as f64)));
                    if tty {
                        crate::term::draw_progress(&format!(
                            "{:>6.1}s  in {}  ({}/s)  out {}  dead {}{lag}  checkpoint {}",
                            started.elapsed().as_secs_f64(),
                            human(p.records_in as f64),
                            human(rate),
                            human(p.records_out as f64),
                            p.dead_letters,
                            ckpt
                        ));
                    } else if last_log.elapsed() >= Duration::from_secs(10) {
                        last_log = Instant::now();
                        // per partition, in the log: what a lag dashboard would show
                        let by_partition: Vec<String> = progress
                            .lag_by_partition()
                            .iter()
                            .map(|(p, n)| format!("{p}={n}"))
                            .collect();
                        tracing::info!(
                            records_in = p.records_in,
                            records_out = p.records_out,
                            dead_letters = p.dead_letters,
                            last_checkpoint = p.last_checkpoint,
                            source_lag = p.source_lag,
                            lag = %by_partition.join(" "),
                            "progress"
                        );
                    }
                }
            })
            .ok();
        Reporter { stop, thread, tty }
    }

    /// Stops and clears the line.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            if self.tty {
                crate::term::clear_progress();
            }
        }
    }
}
