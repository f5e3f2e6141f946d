//! Kubernetes: `REPLICATION_ROLE=auto` between real processes, each with its own host name
//! (`unshare --uts`, as a StatefulSet pod has), and the manifests in `deploy/kubernetes/`.

mod common;

use std::time::Duration;

use common::*;

const CLONE_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs the entrypoint (and its children) with `hostname` as the host name.
fn as_host(hostname: &str) -> Vec<String> {
    ["unshare", "--uts", "sh", "-c", "hostname \"$0\" && exec \"$@\"", hostname].map(String::from).to_vec()
}

fn start_as(node: &mut Node, hostname: &str) {
    let wrapper = as_host(hostname);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    node.spawn_wrapped(&wrapper, &[]).wait_ready(CLONE_TIMEOUT);
}

/// Three members of one pod template: `pg-0`, `pg-1`, `pg-2`.
fn members(name: &str) -> Vec<Node> {
    let mut nodes: Vec<Node> = (0..3).map(|i| Node::new(&format!("{name}-{i}"))).collect();
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let others: Vec<String> = peers.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| p.clone()).collect();
        node.set("HA_MODE", "native")
            .set("REPLICATION_ROLE", "auto")
            .set("REPLICATION_PASSWORD", PASSWORD)
            // The default primary, as POD_SERVICE would make it (pg-0.<service>).
            .set("PRIMARY_HOST", "127.0.0.1")
            .set("PRIMARY_PORT", &ports[0].to_string())
            .set("REPLICATION_PEERS", &others.join(","));
    }
    nodes
}

#[test]
fn auto_follows_the_data_not_the_ordinal_after_a_failover() {
    let mut nodes = members("auto");
    // Empty volumes: the ordinal decides.
    start_as(&mut nodes[0], "pg-0");
    start_as(&mut nodes[1], "pg-1");
    start_as(&mut nodes[2], "pg-2");
    // A commit waits for a majority (pg-0 and one standby): written once they stream.
    nodes[0].client().batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('before')").unwrap();
    for node in &nodes[1..] {
        node.eventually_equals("(SELECT string_agg(v, ',') FROM t)", "before");
        assert_eq!(node.query_one("pg_is_in_recovery()"), "true");
    }
    // Named by their host names, as pods are.
    let standbys = "(SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_replication)";
    nodes[0].eventually_equals(standbys, "pg-1,pg-2");
    let (code, out) = nodes[2].tool(&["health"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("healthy: replica"), "{out}");

    // pg-0 is lost; pg-1 is promoted and takes writes.
    assert_eq!(nodes[0].stop(), 0);
    assert_eq!(nodes[1].query_one("pg_promote(true, 60)"), "true");
    nodes[1].client().batch_execute("INSERT INTO t VALUES ('after')").unwrap();

    // Restarted, the promoted pg-1 stays the primary: its ordinal does not demote it.
    assert_eq!(nodes[1].stop(), 0);
    start_as(&mut nodes[1], "pg-1");
    assert_eq!(nodes[1].query_one("pg_is_in_recovery()"), "false");
    assert!(nodes[1].output().contains("REPLICATION_ROLE=auto: primary"), "{}", nodes[1].output());
    let (code, out) = nodes[1].tool(&["health"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("healthy: primary"), "{out}");

    // pg-2, restarted, follows the writable peer instead of its default primary pg-0.
    assert_eq!(nodes[2].stop(), 0);
    start_as(&mut nodes[2], "pg-2");
    nodes[2].eventually_equals("(SELECT string_agg(v, ',' ORDER BY v) FROM t)", "after,before");
    let pg1 = format!("of 127.0.0.1:{}", nodes[1].port);
    assert!(nodes[2].output().contains(&format!("REPLICATION_ROLE=auto: replica {pg1}")), "{}", nodes[2].output());

    // The old primary pg-0 comes back: it rejoins pg-1 with pg_rewind and streams.
    start_as(&mut nodes[0], "pg-0");
    assert!(nodes[0].output().contains(&format!("REPLICATION_ROLE=auto: replica {pg1}")), "{}", nodes[0].output());
    assert!(nodes[0].output().contains("rewinding it with pg_rewind"), "{}", nodes[0].output());
    nodes[0].eventually_equals("(SELECT string_agg(v, ',' ORDER BY v) FROM t)", "after,before");
    assert_eq!(nodes[0].query_one("pg_is_in_recovery()"), "true");
    let (code, out) = nodes[0].tool(&["health"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("healthy: replica"), "{out}");
    for node in nodes.iter_mut().rev() {
        assert_eq!(node.stop(), 0);
    }
}

#[test]
fn auto_needs_a_statefulset_host_name() {
    let mut nodes = members("auto-name");
    for hostname in ["web", "pg-x"] {
        let wrapper = as_host(hostname);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let status = nodes[0].wrapped_command(&wrapper, &[]).status().unwrap();
        assert_eq!(status.code(), Some(78), "{hostname}");
        let out = nodes[0].output();
        assert!(
            out.contains(&format!(
                "REPLICATION_ROLE: is auto, but the host name {hostname:?} has no StatefulSet ordinal"
            )),
            "{out}"
        );
        assert!(!nodes[0].pgdata.join("PG_VERSION").exists(), "nothing is initialised");
    }
}

/// Runs Python with PyYAML (installed with kubernetes-validate by scripts/ensure-deps.sh).
fn python(script: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("python3").arg("-c").arg(script).args(args).output().unwrap();
    assert!(out.status.success(), "python3: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

const MANIFEST_DIRS: [&str; 2] = ["deploy/kubernetes", "deploy/kubernetes/patroni"];

/// `kubernetes-validate --strict` against two Kubernetes versions: `(passed, output)`.
fn validate(files: &[std::path::PathBuf]) -> Vec<(bool, String)> {
    ["1.30.0", "1.37.0"]
        .iter()
        .map(|version| {
            let out = std::process::Command::new("python3")
                .args(["-m", "kubernetes_validate", "--strict", "--quiet", "--no-warn", "-k", version])
                .args(files)
                .output()
                .unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            (out.status.success(), text)
        })
        .collect()
}

fn manifests(dir: &str) -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_manifests_validate_strictly_against_two_kubernetes_versions() {
    for dir in MANIFEST_DIRS {
        let files = manifests(dir);
        for (passed, out) in validate(&files) {
            assert!(passed, "{dir}: {out}");
        }
        // kubectl apply -k applies what kustomization.yaml lists: every manifest, nothing else.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let listed = python(
            "import sys, yaml; print('\\n'.join(yaml.safe_load(open(sys.argv[1]))['resources']))",
            &[root.join("kustomization.yaml").to_str().unwrap()],
        );
        let mut listed: Vec<&str> = listed.lines().collect();
        listed.sort();
        let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(listed, names, "{dir}/kustomization.yaml");
    }
    // The validator is strict: a misspelt field fails.
    let dir = TempDir::new("k8s-typo");
    let statefulset = manifests("deploy/kubernetes").into_iter().find(|f| f.ends_with("statefulset.yaml")).unwrap();
    let source = std::fs::read_to_string(statefulset).unwrap();
    assert!(source.contains("readinessProbe:"));
    let typo = dir.0.join("statefulset.yaml");
    std::fs::write(&typo, source.replace("readinessProbe:", "readinesProbe:")).unwrap();
    for (passed, out) in validate(&[typo]) {
        assert!(!passed && out.contains("readinesProbe"), "{out}");
    }
}

#[test]
fn haproxy_in_kubernetes_runs_the_docker_configuration() {
    let root = env!("CARGO_MANIFEST_DIR");
    let embedded = python(
        "import sys, yaml; sys.stdout.write(next(yaml.safe_load_all(open(sys.argv[1])))['data']['haproxy.cfg'])",
        &[&format!("{root}/deploy/kubernetes/haproxy.yaml")],
    );
    assert_eq!(embedded, std::fs::read_to_string(format!("{root}/docker/haproxy.cfg")).unwrap());
}

/// The pod template's environment as a pod named `pod` gets it: the downward API's fields
/// filled in, `$(VAR)` expanded, the Secret's mount at `secrets`.
fn pod_env(file: &str, pod: &str, secrets: &std::path::Path) -> Vec<(String, String)> {
    let script = "import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d['kind'] == 'StatefulSet':
        for e in d['spec']['template']['spec']['containers'][0]['env']:
            field = (e.get('valueFrom') or {}).get('fieldRef', {}).get('fieldPath')
            print(e['name'] + '\\t' + ('@' + field if field else e['value']))";
    let text = python(script, &[&format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))]);
    let mut env: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let (name, value) = line.split_once('\t').unwrap();
        let mut value = match value {
            "@metadata.namespace" => "default".to_string(),
            "@metadata.name" => pod.to_string(),
            "@status.podIP" => "127.0.0.1".to_string(),
            field if field.starts_with('@') => panic!("{name}: no test value for {field}"),
            plain => plain.replace("/run/secrets/pg", &secrets.display().to_string()),
        };
        for (earlier, v) in &env {
            value = value.replace(&format!("$({earlier})"), v);
        }
        env.push((name.to_string(), value));
    }
    env
}

fn check_as_pod(file: &str, pod: &str) -> (i32, String) {
    let dir = TempDir::new("k8s-check");
    std::fs::write(dir.0.join("postgres-password"), "pw\n").unwrap();
    std::fs::write(dir.0.join("replication-password"), "rpw\n").unwrap();
    std::fs::write(dir.0.join("patroni-restapi-password"), "apw\n").unwrap();
    let mut argv = as_host(pod);
    argv.extend([env!("CARGO_BIN_EXE_pg-entrypoint").to_string(), "check".to_string()]);
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(pod_env(file, pod, &dir.0))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_accepts_the_pod_templates_environment() {
    let (code, out) = check_as_pod("deploy/kubernetes/statefulset.yaml", "pg-0");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("role:            auto") && out.contains("ordinal 0:"), "{out}");
    assert!(out.contains("peers:           pg-1.pg:5432, pg-2.pg:5432\n"), "{out}");
    let (code, out) = check_as_pod("deploy/kubernetes/statefulset.yaml", "pg-1");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("primary:         pg-0.pg:5432 as pg-1"), "{out}");
    assert!(out.contains("peers:           pg-0.pg:5432, pg-2.pg:5432\n"), "{out}");
    let (code, out) = check_as_pod("deploy/kubernetes/patroni/statefulset.yaml", "pgp-1");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("scope pgp, member pgp-1"), "{out}");
}
