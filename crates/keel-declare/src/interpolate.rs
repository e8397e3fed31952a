//! `${VAR}` and `${VAR:-default}` in pipeline files, replaced before parsing; `$$` is a `$`.

/// Replaces variables using `lookup`. An unset variable without a default is an error with
/// its line number.
pub fn interpolate(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut line = 1;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        line += rest[..i].matches('\n').count();
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = r.find('}').ok_or((line, "unclosed `${`".to_string()))?;
            let inner = &r[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err((line, format!("`${{{inner}}}` is not a variable name")));
            }
            match lookup(name).or(default.map(str::to_owned)) {
                Some(v) => out.push_str(&v),
                None => {
                    return Err((
                        line,
                        format!(
                            "environment variable `{name}` is not set (write `${{{name}:-default}}` for a default)"
                        ),
                    ));
                }
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables() {
        let env = |k: &str| (k == "IN").then(|| "/data".to_string());
        assert_eq!(interpolate("path = \"${IN}/x\"", env).unwrap(), "path = \"/data/x\"");
        assert_eq!(interpolate("a = \"${OUT:-out}\"", env).unwrap(), "a = \"out\"");
        assert_eq!(interpolate("cost = \"$$5 $x\"", env).unwrap(), "cost = \"$5 $x\"");
        assert_eq!(interpolate("a\nb = \"${NOPE}\"", env).unwrap_err().0, 2);
        assert!(interpolate("${", env).is_err());
    }
}
