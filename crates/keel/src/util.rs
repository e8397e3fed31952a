//! Small helpers.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A wall clock: milliseconds since the Unix epoch. Injectable where a test needs a clock
/// that runs ahead or behind.
pub type Clock = std::sync::Arc<dyn Fn() -> u64 + Send + Sync>;

/// [`now_ms`] as a [`Clock`].
pub fn system_clock() -> Clock {
    std::sync::Arc::new(now_ms)
}

/// This machine's host name (`localhost` when it cannot be read), for worker ids.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `ms` since the Unix epoch as an RFC 3339 UTC time (`2026-11-24T01:08:49.229Z`).
pub fn format_rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // days since 1970-01-01 to a civil date (proleptic Gregorian calendar)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod time_format_tests {
    #[test]
    fn formats_known_instants() {
        assert_eq!(super::format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::format_rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(super::format_rfc3339_ms(1_795_482_529_229), "2026-11-24T01:08:49.229Z");
    }
}

/// What [`redact_url`] puts in place of a password.
pub const REDACTED: &str = "***";

/// `text` with every password it may carry replaced by [`REDACTED`], for anything shown to
/// people or logs (descriptions, `Debug`, errors, log fields).
///
/// Handles, anywhere in `text` (so an error message quoting a location is cleaned too):
/// - URLs with user info, `scheme://user:pass@host/...` → `scheme://user:***@host/...`
///   (also `scheme://:pass@host`); the user info ends at the last `@` before the path, so a
///   password with an unescaped `@` is hidden whole;
/// - `key=value` settings whose key is `password`, `passwd`, `pwd` or `pass`
///   (case-insensitive), as in PostgreSQL connection strings (`host=h password=secret`,
///   quoted values `password='a b'` included) and URL queries (`?password=secret&...`).
///
/// Anything else is returned unchanged; a user name alone is not a secret.
pub fn redact_url(text: &str) -> String {
    redact_settings(&redact_userinfo(text))
}

/// `scheme://user:pass@` → `scheme://user:***@` for every URL in `text`.
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // the authority ends at the first '/', '?', '#' or whitespace
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..=colon]);
                        out.push_str(REDACTED);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `password=secret` → `password=***` (keys as in [`redact_url`]).
fn redact_settings(text: &str) -> String {
    const KEYS: [&str; 4] = ["password", "passwd", "pwd", "pass"];
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let at_word_start = i == 0
            || matches!(
                bytes[i - 1],
                b' ' | b'\t' | b'\n' | b'?' | b'&' | b';' | b',' | b'"' | b'\''
            );
        let key = at_word_start
            .then(|| {
                KEYS.iter().find(|k| {
                    bytes.len() >= i + k.len()
                        && bytes[i..i + k.len()].eq_ignore_ascii_case(k.as_bytes())
                        && text[i + k.len()..].trim_start().starts_with('=')
                })
            })
            .flatten();
        let Some(key) = key else {
            i += 1;
            continue;
        };
        // the value starts after '=' and optional spaces
        let eq = i + key.len() + text[i + key.len()..].find('=').unwrap_or(0);
        let mut start = eq + 1;
        while start < bytes.len() && bytes[start] == b' ' {
            start += 1;
        }
        let end = if start < bytes.len() && (bytes[start] == b'\'' || bytes[start] == b'"') {
            // a quoted value: up to the closing quote (backslash escapes skipped), quotes kept
            let q = bytes[start];
            let mut j = start + 1;
            while j < bytes.len() && bytes[j] != q {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            out.push_str(&text[copied..start + 1]);
            out.push_str(REDACTED);
            copied = j.min(bytes.len());
            i = copied + 1;
            continue;
        } else {
            text[start..]
                .find(|c: char| c.is_whitespace() || c == '&' || c == ';' || c == '#' || c == ',')
                .map_or(bytes.len(), |n| start + n)
        };
        out.push_str(&text[copied..start]);
        if end > start {
            out.push_str(REDACTED);
        }
        copied = end;
        i = end.max(i + 1);
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn passwords_are_hidden_in_every_shape() {
        let cases = [
            ("redis://:s3cret@127.0.0.1:6379/", "redis://:***@127.0.0.1:6379/"),
            ("redis://user:s3cret@host:6379/0", "redis://user:***@host:6379/0"),
            ("rediss://default:s3cret@host", "rediss://default:***@host"),
            (
                "postgres://keel:s3cret@db:5432/test",
                "postgres://keel:***@db:5432/test",
            ),
            ("postgresql://keel:p@ss@db/test", "postgresql://keel:***@db/test"),
            (
                "postgres://keel:s3cret@db?sslmode=disable",
                "postgres://keel:***@db?sslmode=disable",
            ),
            ("postgres://keel@db:5432/test", "postgres://keel@db:5432/test"),
            ("postgres://db:5432/test", "postgres://db:5432/test"),
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            ("redis://:@host/", "redis://:***@host/"),
            (
                "postgres://db/test?password=s3cret&user=k",
                "postgres://db/test?password=***&user=k",
            ),
            (
                "host=db user=keel password=s3cret dbname=test",
                "host=db user=keel password=*** dbname=test",
            ),
            ("host=db password = s3cret", "host=db password = ***"),
            (
                "host=db password='s3 cret' dbname=test",
                "host=db password='***' dbname=test",
            ),
            ("host=db PASSWORD=s3cret", "host=db PASSWORD=***"),
            ("pwd=s3cret", "pwd=***"),
            ("passphrase=hello", "passphrase=hello"),
            ("user=password", "user=password"),
            ("sqlite:queue.db", "sqlite:queue.db"),
            ("", ""),
            ("héllo://ü:sécret@høst/é", "héllo://ü:***@høst/é"),
            (
                "opening redis://:a@h/ failed, then postgres://u:b@h/x failed",
                "opening redis://:***@h/ failed, then postgres://u:***@h/x failed",
            ),
            (
                "connecting to redis://:s3cret@h:1/: refused",
                "connecting to redis://:***@h:1/: refused",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url(input), want, "{input}");
        }
    }

    #[test]
    fn no_input_panics_or_leaks_the_secret() {
        for input in [
            "://",
            "a://",
            "://@",
            "x://:@",
            "password=",
            "password",
            "password='",
            "password=\"a\\",
            "pass=é",
            "é://é:é@é",
            "password==s3cret",
        ] {
            let out = redact_url(input);
            assert!(!out.contains("s3cret"), "{input} -> {out}");
        }
    }
}
