//! Reading an endpoint: a blocking HTTP/1.1 GET and a parser of the text exposition
//! format, enough for tests and tools to check what a daemon reports.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// `METHOD path` on `addr` with `Connection: close` (blocking; 10 s timeouts).
pub fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<Reply> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).map_err(|_| bad("reply is not UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("reply without an end of headers"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("reply without a status line"))?;
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    Ok(Reply {
        status,
        content_type,
        body: body.to_string(),
    })
}

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// Samples named `name` whose labels include every pair of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the one sample that matches; `None` when none does.
    ///
    /// Panics when several match: the caller's labels do not pick one series.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<_> = self.matching(name, labels).collect();
        assert!(
            found.len() <= 1,
            "{name}{labels:?} matches {} series",
            found.len()
        );
        found.first().map(|s| s.value)
    }

    /// The sum over every matching sample (0 when none matches).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }
}

/// Parses the Prometheus/OpenMetrics text format; comment lines (`# TYPE`, `# HELP`,
/// `# EOF`) are skipped.
pub fn parse(text: &str) -> Result<Samples, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|e| format!("line {}: {e}: {line:?}", n + 1))?);
    }
    Ok(Samples(out))
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("no metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let close;
        loop {
            while chars.next_if(|(_, c)| *c == ',' || *c == ' ').is_some() {}
            match chars.peek() {
                Some((i, '}')) => {
                    close = *i;
                    break;
                }
                None => return Err("unclosed label set".into()),
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key:?} without a quoted value"));
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(c @ ('\\' | '"')) => value.push(c),
                        _ => return Err("bad escape in a label value".into()),
                    },
                    Some(c) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            }
            labels.insert(key.trim().to_string(), value);
        }
        rest = &inner[close + 1..];
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or("no value")?
        .parse::<f64>()
        .map_err(|e| format!("value: {e}"))?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The address a daemon logged with [`crate::LISTENING`] (`address=IP:PORT`), the last one
/// when it started several times.
pub fn address_from_log(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|l| l.contains(crate::LISTENING))
        .filter_map(|l| {
            let at = l.find("address=")? + "address=".len();
            l[at..].split_whitespace().next()?.parse().ok()
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_gauges_and_escaped_labels() {
        let text = "# HELP x_total A counter.\n# TYPE x_total counter\n\
            x_total{grpc_method=\"CreateVolume\",grpc_code=\"OK\"} 3\n\
            y{path=\"a\\\"b\\\\c\\nd\", pool=\"p,1\"} 1.5e3\n\
            z 7 1700000000\n# EOF\n";
        let s = parse(text).unwrap();
        assert_eq!(s.0.len(), 3);
        assert_eq!(
            s.value("x_total", &[("grpc_method", "CreateVolume")]),
            Some(3.0)
        );
        assert_eq!(
            s.value("y", &[("path", "a\"b\\c\nd"), ("pool", "p,1")]),
            Some(1500.0)
        );
        assert_eq!(s.value("z", &[]), Some(7.0));
        assert_eq!(s.value("x_total", &[("grpc_code", "NotFound")]), None);
        assert_eq!(s.sum("x_total", &[]), 3.0);
    }

    #[test]
    fn refuses_malformed_lines() {
        for bad in [
            "x{a=\"1\" 2",
            "x{a=1} 2",
            "x{a=\"1} 2",
            "x",
            "x{} y",
            "{a=\"1\"} 2",
            "x{a=\"\\q\"} 1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_the_logged_address() {
        let log = "2026 INFO strata_metrics::server: serving metrics address=127.0.0.1:4000\n\
                   later INFO other\n\
                   2026 INFO strata_metrics::server: serving metrics address=[::1]:4001 x=y\n";
        assert_eq!(address_from_log(log), Some("[::1]:4001".parse().unwrap()));
        assert_eq!(address_from_log("nothing"), None);
    }
}
