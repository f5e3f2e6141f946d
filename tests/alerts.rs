//! The alert rules (deploy/prometheus/alerts.yml) through Prometheus's own `promtool`: they
//! load, and each fires when it should and not otherwise (alerts.test.yml). The Grafana
//! dashboard (deploy/grafana) has the structure Grafana imports. That every metric they
//! name exists is checked against real scrapes in tests/metrics.rs.

use std::path::Path;
use std::process::Command;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(Path::new(DEPLOY).join("prometheus"))
        .output()
        .expect("promtool (Debian's prometheus package; scripts/ensure-deps.sh installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn the_rules_load_and_each_fires_when_it_should() {
    let (ok, out) = promtool(&["check", "rules", "alerts.yml"]);
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 9 rules found"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(ok, "{out}");
    // Every alert of the file has a unit test.
    let rules = std::fs::read_to_string(Path::new(DEPLOY).join("prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(Path::new(DEPLOY).join("prometheus/alerts.test.yml")).unwrap();
    for name in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tests.contains(&format!("alertname: {name}\n")), "{name} has no test in alerts.test.yml");
    }
}

#[test]
fn a_broken_rule_is_caught() {
    // The check above can fail: promtool refuses a rule whose expression does not parse.
    let dir = std::env::temp_dir().join(format!("pgep-alerts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("broken.yml");
    std::fs::write(&broken, "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: max by (scope (up)\n")
        .unwrap();
    let (ok, out) = promtool(&["check", "rules", broken.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).ok();
    assert!(!ok, "{out}");
}

#[test]
fn the_dashboard_has_what_grafana_imports() {
    let text = std::fs::read_to_string(Path::new(DEPLOY).join("grafana/pg-entrypoint.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(dash["schemaVersion"].as_i64().is_some_and(|v| v >= 30), "schemaVersion");
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    let variables: Vec<&str> =
        dash["templating"]["list"].as_array().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = std::collections::HashSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty() && panel["type"].is_string(), "{panel}");
        assert!(ids.insert(panel["id"].as_i64().unwrap()), "duplicate panel id in {title}");
        for key in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][key].is_i64(), "{title}: gridPos.{key}");
        }
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(expr.contains("patroni_") || expr.contains("pg_entrypoint_") || expr.contains("up{"), "{expr}");
            // Every $variable a query uses is defined.
            for used in expr.split('$').skip(1) {
                let name: String = used.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                assert!(variables.contains(&name.as_str()), "{title}: ${name} is not a dashboard variable");
            }
        }
    }
}
