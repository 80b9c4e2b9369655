//! Output of `nsm ctl`: aligned tables, JSON, YAML, and the small formatters every verb shares
//! (relative times, label maps).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use serde::Serialize;

/// `-o table|json|yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON document (JSON lines for `watch`).
    Json,
    /// One YAML document (a YAML document per event for `watch`).
    Yaml,
}

/// Rows under a header, rendered with columns padded to their widest cell, three spaces apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// The rendered table, one line per row after the header; no trailing spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("   ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Renders `value` as JSON (pretty) or YAML; `None` for [`Format::Table`].
pub fn structured<T: Serialize>(format: Format, value: &T) -> Option<Result<String, String>> {
    match format {
        Format::Table => None,
        Format::Json => Some(
            serde_json::to_string_pretty(value)
                .map(|mut s| {
                    s.push('\n');
                    s
                })
                .map_err(|e| e.to_string()),
        ),
        Format::Yaml => Some(yaml_serde::to_string(value).map_err(|e| e.to_string())),
    }
}

/// A duration the way Go prints it, rounded to seconds: `0s`, `59s`, `4m2s`, `1h0m5s`, `2d3h`.
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86_400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    if days > 0 {
        format!("{days}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m{sec}s")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

/// Seconds from `now` until `t` (negative when `t` has passed).
pub fn seconds_until(now: SystemTime, t: SystemTime) -> i64 {
    match t.duration_since(now) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// `in 4m2s` for a time ahead, `expired 3s ago` for one that has passed, `-` for none.
pub fn fmt_expiry(secs: Option<i64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s >= 0 => format!("in {}", fmt_duration(Duration::from_secs(s.unsigned_abs()))),
        Some(s) => format!(
            "expired {} ago",
            fmt_duration(Duration::from_secs(s.unsigned_abs()))
        ),
    }
}

/// A protobuf timestamp as wall-clock time.
pub fn timestamp(ts: &prost_types::Timestamp) -> Option<SystemTime> {
    nsm_core::clock::from_timestamp(ts)
}

/// RFC 3339 (UTC, seconds) of a wall-clock time.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// `k=v,k2=v2` (sorted by key), `-` when empty.
pub fn fmt_labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let sorted: BTreeMap<&String, &String> = labels.into_iter().collect();
    if sorted.is_empty() {
        return "-".into();
    }
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `-` for an empty string.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_and_trims_the_last() {
        let mut t = Table::new(&["NAME", "PAYLOAD", "MATCHES"]);
        t.row(vec!["icmp-responder".into(), "ETHERNET".into(), "0".into()]);
        t.row(vec!["x".into(), "IP".into(), "12".into()]);
        assert_eq!(
            t.render(),
            "NAME             PAYLOAD    MATCHES\n\
             icmp-responder   ETHERNET   0\n\
             x                IP         12\n"
        );
    }

    #[test]
    fn table_fills_short_rows_and_has_no_trailing_spaces() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["long-value".into()]);
        t.row(vec!["✓".into(), "ok".into(), "dropped".into()]);
        let r = t.render();
        assert_eq!(r, "A            B\nlong-value\n✓            ok\n");
        assert!(r.lines().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn empty_table_is_its_header() {
        assert_eq!(Table::new(&["ID", "STATE"]).render(), "ID   STATE\n");
    }

    #[test]
    fn durations_and_expiry() {
        assert_eq!(fmt_duration(Duration::from_secs(0)), "0s");
        assert_eq!(fmt_duration(Duration::from_millis(59_900)), "59s");
        assert_eq!(fmt_duration(Duration::from_secs(242)), "4m2s");
        assert_eq!(fmt_duration(Duration::from_secs(3605)), "1h0m5s");
        assert_eq!(
            fmt_duration(Duration::from_secs(2 * 86_400 + 3 * 3600)),
            "2d3h"
        );
        assert_eq!(fmt_expiry(Some(60)), "in 1m0s");
        assert_eq!(fmt_expiry(Some(-3)), "expired 3s ago");
        assert_eq!(fmt_expiry(None), "-");
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(seconds_until(now, now + Duration::from_secs(5)), 5);
        assert_eq!(seconds_until(now, now - Duration::from_secs(5)), -5);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn labels_sorted() {
        let m: BTreeMap<String, String> = [("z".into(), "1".into()), ("a".into(), "2".into())]
            .into_iter()
            .collect();
        assert_eq!(fmt_labels(&m), "a=2,z=1");
        assert_eq!(fmt_labels(&BTreeMap::new()), "-");
    }

    #[test]
    fn structured_outputs() {
        #[derive(Serialize)]
        struct R {
            name: &'static str,
        }
        let v = vec![R { name: "a" }];
        assert!(structured(Format::Table, &v).is_none());
        let j = structured(Format::Json, &v).unwrap().unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&j).unwrap()[0]["name"],
            "a"
        );
        let y = structured(Format::Yaml, &v).unwrap().unwrap();
        assert_eq!(y, "- name: a\n");
    }
}
