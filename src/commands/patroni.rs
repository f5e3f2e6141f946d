//! The operator commands of a Patroni member: `health`, `status` and `promote` ask this
//! member's Patroni REST API, so nothing is ever done behind Patroni's back (a `pg_ctl
//! promote` would make a second primary that Patroni then has to demote).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::config::{parse_bool, var_or_alias, var_or_file, Inputs};
use crate::render::quote_json;

/// True when the environment selects Patroni mode (`HA_MODE=patroni`, or the original image's
/// `USE_PATRONI` / `PATRONI_ENABLE`).
pub fn selected(inputs: &dyn Inputs) -> bool {
    let on = |name: &str| inputs.var(name).as_deref().and_then(parse_bool) == Some(true);
    inputs.var("HA_MODE").as_deref() == Some("patroni") || on("USE_PATRONI") || on("PATRONI_ENABLE")
}

/// This member's REST API: `HTTP_LISTEN` if it names one address, else loopback; `HTTP_PORT`.
fn rest_api(inputs: &dyn Inputs) -> SocketAddr {
    let port =
        var_or_alias(inputs, "HTTP_PORT").and_then(|p| p.parse().ok()).unwrap_or(crate::config::DEFAULT_HTTP_PORT);
    let ip = var_or_alias(inputs, "HTTP_LISTEN")
        .and_then(|a| a.trim_matches(['[', ']']).parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, port)
}

/// One HTTP/1.0 exchange: (status, body).
fn request(inputs: &dyn Inputs, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
    let address = rest_api(inputs);
    let timeout = Duration::from_secs(if method == "GET" { 3 } else { 60 });
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map_err(|e| format!("Patroni's REST API at {address} does not answer: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {address}\r\n");
    // Patroni asks for these on every call that changes something (the start refuses a
    // member without them); GETs are open.
    let user = var_or_file(inputs, "PATRONI_RESTAPI_USERNAME")
        .unwrap_or_else(|| crate::config::DEFAULT_PATRONI_RESTAPI_USER.to_string());
    let password = var_or_file(inputs, "PATRONI_RESTAPI_PASSWORD");
    if let (Some(password), false) = (password, method == "GET") {
        head.push_str(&format!("Authorization: Basic {}\r\n", base64(format!("{user}:{password}").as_bytes())));
    }
    let body = body.unwrap_or("");
    head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(head.as_bytes()).map_err(|e| format!("{address}: {e}"))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| format!("{address}: {e}"))?;
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("not an HTTP answer")?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok((status, body))
}

/// The string value of `"key": "..."` in a JSON object (Patroni's answers are flat enough).
fn field(json: &str, key: &str) -> Option<String> {
    let after = &json[json.find(&format!("\"{key}\""))? + key.len() + 2..];
    let value = after.trim_start().strip_prefix(':')?.trim_start();
    if let Some(text) = value.strip_prefix('"') {
        return text.split('"').next().map(String::from);
    }
    value.split([',', '}']).next().map(|v| v.trim().to_string())
}

/// `health`: Patroni's own checks. Liveness: `/liveness` (Patroni's loop runs); readiness:
/// `/readiness` (postgres runs, and a replica is close enough to be a candidate).
pub fn health(inputs: &dyn Inputs, liveness: bool) -> i32 {
    let path = if liveness { "/liveness" } else { "/readiness" };
    let verdict = request(inputs, "GET", path, None).and_then(|(status, _)| {
        let (_, about) = request(inputs, "GET", "/patroni", None)?;
        let role = field(&about, "role").unwrap_or_else(|| "unknown".into());
        let state = field(&about, "state").unwrap_or_else(|| "unknown".into());
        let line = format!("patroni {role}, postgres {state}");
        if status == 200 {
            Ok(line)
        } else {
            Err(format!("{line} ({path} answered {status})"))
        }
    });
    match verdict {
        Ok(line) => {
            println!("healthy: {line}");
            0
        }
        Err(line) => {
            println!("unhealthy: {line}");
            1
        }
    }
}

/// `status`: the cluster as this member's Patroni sees it (members, roles, timelines, lag).
pub fn status(inputs: &dyn Inputs) -> i32 {
    match request(inputs, "GET", "/cluster", None) {
        Ok((200, body)) => {
            println!("{}", body.trim_end());
            0
        }
        Ok((status, body)) => {
            eprintln!("status: Patroni answered {status}: {}", body.trim());
            1
        }
        Err(e) => {
            eprintln!("status: {e}");
            1
        }
    }
}

/// `promote`: a switchover to this member when the cluster has a leader (Patroni checks the
/// candidate is healthy and caught up), a failover to it when it has none.
pub fn promote(inputs: &dyn Inputs) -> i32 {
    // This member's name as the configuration gives it (Patroni 3.0's /patroni omits it).
    let name = inputs.var("PATRONI_NAME").filter(|n| !n.is_empty()).unwrap_or_else(|| inputs.hostname());
    let result = request(inputs, "GET", "/cluster", None).and_then(|(_, cluster)| {
        let leader = leader_of(&cluster);
        if leader.as_deref() == Some(name.as_str()) {
            return Ok(format!("{name} is already the leader"));
        }
        let (status, body) = match &leader {
            Some(leader) => request(
                inputs,
                "POST",
                "/switchover",
                Some(&format!("{{\"leader\": {}, \"candidate\": {}}}", quote_json(leader), quote_json(&name))),
            )?,
            None => request(inputs, "POST", "/failover", Some(&format!("{{\"candidate\": {}}}", quote_json(&name))))?,
        };
        match status {
            200 => Ok(body.trim().to_string()),
            _ => Err(format!("Patroni refused ({status}): {}", body.trim())),
        }
    });
    match result {
        Ok(said) => {
            println!("promote: {said}");
            0
        }
        Err(e) => {
            eprintln!("promote: {e}");
            1
        }
    }
}

/// `switchover [--to MEMBER]`: Patroni's own, from the leader to `to` (or to the member
/// Patroni finds best).
pub fn switchover(inputs: &dyn Inputs, to: Option<&str>) -> i32 {
    let result = request(inputs, "GET", "/cluster", None).and_then(|(_, cluster)| {
        let leader =
            leader_of(&cluster).ok_or("the cluster has no leader; a switchover needs one (promote fails over)")?;
        let body = match to {
            Some(to) => format!("{{\"leader\": {}, \"candidate\": {}}}", quote_json(&leader), quote_json(to)),
            None => format!("{{\"leader\": {}}}", quote_json(&leader)),
        };
        match request(inputs, "POST", "/switchover", Some(&body))? {
            (200, body) => Ok(body.trim().to_string()),
            (status, body) => Err(format!("Patroni refused ({status}): {}", body.trim())),
        }
    });
    match result {
        Ok(said) => {
            println!("switchover: {said}");
            0
        }
        Err(e) => {
            eprintln!("switchover: {e}");
            1
        }
    }
}

/// The member whose role is `leader` in Patroni's `/cluster` answer.
fn leader_of(cluster: &str) -> Option<String> {
    cluster.split('{').find(|m| field(m, "role").as_deref() == Some("leader")).and_then(|m| field(m, "name"))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_patronis_answers() {
        let cluster = r#"{"members": [{"name": "pg-1", "role": "replica", "state": "streaming", "lag": 0},
            {"name": "pg-2", "role": "leader", "state": "running", "timeline": 3}], "scope": "pg"}"#;
        assert_eq!(leader_of(cluster).as_deref(), Some("pg-2"));
        assert_eq!(field(cluster, "scope").as_deref(), Some("pg"));
        assert_eq!(field(r#"{"lag": 42}"#, "lag").as_deref(), Some("42"));
        assert_eq!(leader_of(r#"{"members": [{"name": "a", "role": "replica"}]}"#), None);
    }

    #[test]
    fn encodes() {
        assert_eq!(base64(b"patroni:s3cret"), "cGF0cm9uaTpzM2NyZXQ=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }
}
