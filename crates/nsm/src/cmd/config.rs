//! Parsing of configuration values shared by subcommands: Go durations, log levels, lists.

use std::time::Duration;

/// A configuration error: which variable/flag and why. Subcommands exit with code 2 on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a Go `time.ParseDuration` string (`1m`, `30s`, `100ms`, `1h30m`, `1.5s`, `0`).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.starts_with('-') {
        return Err(format!("{s:?}: negative durations are not allowed"));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?}: missing unit (use ns, us, ms, s, m or h)"))?;
        if num_len == 0 {
            return Err(format!("{s:?}: expected a number"));
        }
        let n: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("{s:?}: bad number {:?}", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => {
                return Err(format!(
                    "{s:?}: unknown unit {u:?} (use ns, us, ms, s, m or h)"
                ));
            }
        };
        rest = &rest[unit_len..];
        total += n * unit;
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses an NSM log level (TRACE, DEBUG, INFO, WARN/WARNING, ERROR; any case).
pub fn parse_log_level(s: &str) -> Result<tracing::Level, String> {
    match s.trim().to_ascii_uppercase().as_str() {
        "TRACE" => Ok(tracing::Level::TRACE),
        "DEBUG" => Ok(tracing::Level::DEBUG),
        "INFO" => Ok(tracing::Level::INFO),
        "WARN" | "WARNING" => Ok(tracing::Level::WARN),
        "ERROR" | "FATAL" | "PANIC" => Ok(tracing::Level::ERROR),
        _ => Err(format!(
            "{s:?} is not a log level (TRACE, DEBUG, INFO, WARN, ERROR)"
        )),
    }
}

/// Sets up `tracing` output to stderr at `level`.
pub fn init_logging(level: tracing::Level) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_go_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_go_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_go_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "10", "1x", "-1s", "s", "1m-"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn log_levels() {
        assert_eq!(parse_log_level("debug"), Ok(tracing::Level::DEBUG));
        assert_eq!(parse_log_level("Warn"), Ok(tracing::Level::WARN));
        assert!(parse_log_level("loud").is_err());
    }
}
