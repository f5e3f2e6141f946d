//! The parser's primitives: one variable as a string, a secret, an identifier, a boolean, a
//! duration, a port; each problem is recorded against its variable and parsing goes on, so
//! that every problem is reported at once.

use std::path::Path;
use std::time::Duration;

use super::inputs::without_newlines;
use super::inputs::MAX_SECRET_FILE;
use super::{Address, Inputs, Problem, Secret};

/// The upstream image's names for variables of ours: read as ours (both set and different
/// is a problem). Values are not shown (two of them are passwords).
const ALIASES: [(&str, &str); 8] = [
    ("REPLICATION_USER", "PATRONI_REPLICATION_USER"),
    ("REPLICATION_PASSWORD", "PATRONI_REPLICATION_PASSWORD"),
    ("REPLICATION_PASSWORD_FILE", "PATRONI_REPLICATION_PASSWORD_FILE"),
    ("HTTP_LISTEN", "PATRONI_REST_HOST"),
    ("HTTP_PORT", "PATRONI_REST_PORT"),
    ("ADVERTISE_HOST", "POSTGRESQL_CONNECT_HOST"),
    ("ADVERTISE_HOST", "PATRONI_REST_CONNECT_HOST"),
    ("ETCD_HOSTS", "PATRONI_ETCD_HOSTS"),
];

/// `name`, or one of the upstream image's names for it (the first set), without the checks
/// the parser makes: for the operator commands, which need a value or two.
pub fn var_or_alias(inputs: &dyn Inputs, name: &str) -> Option<String> {
    let names = std::iter::once(name).chain(ALIASES.iter().filter(|(n, _)| *n == name).map(|(_, alias)| *alias));
    names.filter_map(|n| inputs.var(n)).find(|v| !v.is_empty())
}

/// The upstream image's names that only Patroni mode reads (refused without it).
pub(super) const PATRONI_ONLY: [&str; 8] = [
    "PATRONI_TTL",
    "PATRONI_LOOP_WAIT",
    "PATRONI_RETRY_TIMEOUT",
    "PATRONI_MAX_LAG",
    "PATRONI_USE_PG_REWIND",
    "PATRONI_USE_SLOTS",
    "PATRONI_SYNCHRONOUS_MODE",
    "PATRONI_SYNCHRONOUS_MODE_STRICT",
];

/// The upstream image's `PATRONI_*` names that we translate into `patroni.yml`: never passed
/// on to Patroni, which reads some of them its own way (`PATRONI_ETCD_HOSTS` as an etcd v2
/// store, which recent etcd no longer serves).
pub fn translated_patroni_names() -> impl Iterator<Item = &'static str> {
    let aliased = ALIASES.iter().map(|(_, alias)| *alias).filter(|alias| alias.starts_with("PATRONI_"));
    let settings = ["PATRONI_MAX_WAL_SENDERS", "PATRONI_MAX_REPLICATION_SLOTS"];
    aliased.chain(PATRONI_ONLY).chain(settings)
}

pub(super) struct Parser<'a> {
    pub(super) inputs: &'a dyn Inputs,
    pub(super) problems: Vec<Problem>,
    /// Our variables whose value came from an upstream name, and that name.
    pub(super) from_alias: Vec<(String, &'static str)>,
}

impl Parser<'_> {
    /// A problem with `variable`, named as the user set it: the upstream image's name when the
    /// value came from that alias.
    pub(super) fn problem(&mut self, variable: &str, message: impl Into<String>) {
        let named = self.from_alias.iter().find(|(ours, _)| ours == variable).map_or(variable, |(_, alias)| alias);
        self.problems.push(Problem { variable: named.to_string(), message: message.into() });
    }

    /// A variable; empty counts as unset, as in the official image. Bytes that are not UTF-8
    /// are refused (a password altered by a lossy conversion would silently not work).
    pub(super) fn var(&mut self, name: &str) -> Option<String> {
        let mut value = self.one_var(name);
        for (_, alias) in ALIASES.iter().filter(|(n, _)| *n == name) {
            value = match (value, self.one_var(alias)) {
                (Some(a), Some(b)) if a != b => {
                    if !self.problems.iter().any(|p| p.variable == *alias) {
                        self.problem(alias, format!("disagrees with {name}; set one of them"));
                    }
                    Some(a)
                }
                (None, Some(theirs)) => {
                    if !self.from_alias.iter().any(|(ours, _)| ours == name) {
                        self.from_alias.push((name.to_string(), alias));
                    }
                    Some(theirs)
                }
                (ours, theirs) => ours.or(theirs),
            };
        }
        value
    }

    fn one_var(&mut self, name: &str) -> Option<String> {
        if self.inputs.not_utf8(name) {
            if !self.problems.iter().any(|p| p.variable == name) {
                self.problem(name, "is not valid UTF-8; accepted: UTF-8 text");
            }
            return None;
        }
        self.inputs.var(name).filter(|v| !v.is_empty())
    }

    /// `NAME` or `NAME_FILE`, never both. File contents lose trailing newlines.
    pub(super) fn secret(&mut self, name: &str) -> Option<Secret> {
        let file_var = format!("{name}_FILE");
        match (self.var(name), self.var(&file_var)) {
            (Some(_), Some(_)) => {
                self.problem(name, format!("both {name} and {file_var} are set; set only one"));
                None
            }
            (Some(value), None) => Some(Secret(value)),
            (None, Some(path)) => match self.inputs.read_file(Path::new(&path), MAX_SECRET_FILE) {
                Ok(text) => {
                    let value = without_newlines(&text);
                    if value.is_empty() {
                        self.problem(&file_var, format!("the file {path:?} is empty"));
                        None
                    } else {
                        Some(Secret(value))
                    }
                }
                Err(e) => {
                    self.problem(&file_var, format!("cannot read {path:?}: {e}"));
                    None
                }
            },
            (None, None) => None,
        }
    }

    /// `NAME`, or the contents of the file `NAME_FILE` names, as the official image's
    /// `file_env` reads `POSTGRES_USER`, `POSTGRES_DB` and `POSTGRES_INITDB_ARGS`.
    pub(super) fn var_or_file(&mut self, name: &str) -> Option<String> {
        self.secret(name).map(|s| s.0)
    }

    pub(super) fn identifier(&mut self, name: &str, default: &str) -> String {
        let value = self.var_or_file(name).unwrap_or_else(|| default.to_string());
        if value.len() > MAX_IDENTIFIER_BYTES {
            self.problem(
                name,
                format!("{} is {} bytes long; at most {MAX_IDENTIFIER_BYTES} are accepted", shown(&value), value.len()),
            );
        } else if value.chars().any(char::is_control) {
            self.problem(
                name,
                format!("{} contains a control character; printable characters are accepted", shown(&value)),
            );
        }
        value
    }

    pub(super) fn boolean(&mut self, name: &str) -> Option<bool> {
        let value = self.var(name)?;
        let parsed = parse_bool(&value);
        if parsed.is_none() {
            self.problem(
                name,
                format!("{} is not a boolean; accepted: true/false, on/off, yes/no, 1/0", shown(&value)),
            );
        }
        parsed
    }

    pub(super) fn duration(&mut self, name: &str, default: Duration) -> Duration {
        match self.var(name) {
            None => default,
            Some(value) => parse_duration(&value).unwrap_or_else(|| {
                self.problem(
                    name,
                    format!(
                        "{} is not a duration; accepted: whole seconds (\"120\", \"120s\") or minutes (\"2m\"), up to a day", shown(&value)
                    ),
                );
                default
            }),
        }
    }

    /// A whole number from 1 to `max`; `default` when unset.
    pub(super) fn whole_number(&mut self, name: &str, default: u32, max: u32) -> u32 {
        let Some(value) = self.var(name) else { return default };
        value.parse::<u32>().ok().filter(|n| (1..=max).contains(n)).unwrap_or_else(|| {
            self.problem(name, format!("{value:?} is not accepted; accepted: a whole number from 1 to {max}"));
            default
        })
    }

    /// `<prefix>*` variables without `<prefix>ENABLE`: refused rather than ignored, so that
    /// nobody believes the feature is on (`nothing`: what would not happen).
    pub(super) fn refuse_without_enable(&mut self, prefix: &str, nothing: &str) {
        let mut set: Vec<String> = self
            .inputs
            .vars_with_prefix(prefix)
            .into_iter()
            .filter(|(k, v)| !v.is_empty() && !super::known::is_service_link(k, v))
            .map(|(k, _)| k)
            .collect();
        set.sort();
        if let Some(first) = set.first().cloned() {
            self.problem(
                &first,
                format!(
                    "is set ({}), but {prefix}ENABLE is not: {nothing}. Set {prefix}ENABLE=true to use them, or \
                     {prefix}ENABLE=false to run without",
                    set.join(", ")
                ),
            );
        }
    }

    pub(super) fn port(&mut self, name: &str, default: u16) -> u16 {
        match self.var(name) {
            None => default,
            Some(value) => match value.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => {
                    self.problem(name, format!("{} is not a port; accepted: 1 to 65535", shown(&value)));
                    default
                }
            },
        }
    }
}

/// A value as a problem shows it: quoted, and cut after 64 characters (a 100 kB value would
/// otherwise fill the log).
pub(super) fn shown(value: &str) -> String {
    const SHOWN: usize = 64;
    match value.char_indices().nth(SHOWN) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &value[..cut], value.len()),
    }
}

/// `LOG_LEVEL`, in any case.
pub fn parse_log_level(value: &str) -> Option<tracing::Level> {
    match value.to_ascii_lowercase().as_str() {
        "error" => Some(tracing::Level::ERROR),
        "warn" => Some(tracing::Level::WARN),
        "info" => Some(tracing::Level::INFO),
        "debug" => Some(tracing::Level::DEBUG),
        "trace" => Some(tracing::Level::TRACE),
        _ => None,
    }
}

/// `LOG_FORMAT`: true for JSON lines, false for text.
pub fn parse_log_format(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "text" => Some(false),
        "json" => Some(true),
        _ => None,
    }
}

/// `host`, `host:port` or `[ipv6]:port`.
pub fn parse_address(text: &str, default_port: u16) -> Option<Address> {
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None if text.matches(':').count() == 1 => {
            let (host, port) = text.split_once(':')?;
            (host, Some(port))
        }
        None => (text, None),
    };
    let port = match port {
        None => default_port,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0)?,
    };
    let printable = !host.is_empty() && !host.chars().any(|c| c.is_control() || c.is_whitespace());
    printable.then(|| Address { host: host.to_string(), port })
}

pub fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Some(true),
        "false" | "off" | "no" | "0" => Some(false),
        _ => None,
    }
}

pub(super) fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let (number, unit) = match value.strip_suffix('s') {
        Some(n) => (n, 1),
        None => match value.strip_suffix('m') {
            Some(n) => (n, 60),
            None => (value, 1),
        },
    };
    // At most a day: longer is a typo, and far-future deadlines overflow.
    number.parse::<u64>().ok().and_then(|n| n.checked_mul(unit)).filter(|s| *s <= 86_400).map(Duration::from_secs)
}

/// PostgreSQL silently truncates longer identifiers (NAMEDATALEN - 1).
pub(super) const MAX_IDENTIFIER_BYTES: usize = 63;
