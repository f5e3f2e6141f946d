//! Drop-in for the official image, at the process level: init scripts as it runs them
//! (sourced bash with its helpers, the cluster at its real path, restarts with pg_ctl), its
//! script names, `--version`, and arbitrary uids (`docker run --user`). The image itself
//! (uid 999, locale, PATH, links) is tested in tests/docker.rs.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use common::*;

const INITIALISING: &str = ".pg-entrypoint-initialising";
/// An OpenShift-style uid that no /etc/passwd lists.
const ARBITRARY_UID: u32 = 12345;

#[test]
fn a_sourced_script_gets_bash_and_the_official_helpers() {
    let mut node = Node::new("sourced");
    let user = node.scratch().join("user");
    fs::write(&user, "alice\n").unwrap();
    node.set("POSTGRES_USER_FILE", &user.display().to_string()).set("POSTGRES_DB", "shop");
    let secret = node.scratch().join("thing");
    fs::write(&secret, "from-a-file\n").unwrap();
    node.set("THING_FILE", &secret.display().to_string());
    let zero = node.scratch().join("zero");
    // Not executable: sourced, as the official image does. Bash syntax throughout.
    node.script(
        "01-sourced.sh",
        format!(
            r#"[[ -n "$POSTGRES_USER" ]]
names=(alpha beta)
docker_process_sql <<-EOSQL
	CREATE TABLE greet (who text, via text);
	INSERT INTO greet VALUES ('${{names[0]}}', 'docker_process_sql');
EOSQL
"${{psql[@]}}" -c "INSERT INTO greet VALUES ('${{names[1]}}', 'psql array')"
file_env THING
"${{psql[@]}}" -c "INSERT INTO greet VALUES ('$THING', 'file_env')"
"${{psql[@]}}" -c "INSERT INTO greet VALUES ('$POSTGRES_USER/$POSTGRES_DB/$PGDATA', 'env')"
[ -n "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_PASSWORD" = "$PGPASSWORD" ]
echo "$0" > {zero}
"#,
            zero = zero.display()
        )
        .as_bytes(),
    );
    node.start();
    let rows = node.query_one("(SELECT string_agg(who || '=' || via, ',' ORDER BY ctid) FROM greet)");
    let env = format!("alice/shop/{}=env", node.pgdata.display());
    assert_eq!(rows, format!("alpha=docker_process_sql,beta=psql array,from-a-file=file_env,{env}"));
    assert_eq!(fs::read_to_string(&zero).unwrap().trim(), "docker-entrypoint.sh");
    // The operator commands find the superuser through POSTGRES_USER_FILE too.
    let (code, said) = node.tool(&["health"]);
    assert_eq!((code, said.trim()), (0, "healthy: standalone, accepting writes"));
    assert_eq!(node.stop(), 0);
}

#[test]
fn a_sourced_script_stops_at_its_first_failing_command() {
    let mut node = Node::new("sourced-errexit");
    let after = node.scratch().join("after-false");
    node.script("01-fails.sh", format!("false\ntouch {}\n", after.display()).as_bytes());
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("01-fails.sh") && out.contains("failed with exit code 1"), "{out}");
    assert!(!after.exists(), "the script went on after a failing command");
    assert!(node.pgdata.join(INITIALISING).exists(), "a failed bootstrap must not look finished");
}

#[test]
fn scripts_edit_the_real_configuration_and_restart_the_server_with_pg_ctl() {
    let mut node = Node::new("restart");
    node.script(
        "01-preload.sh",
        br#"echo "shared_preload_libraries = 'pg_stat_statements'" >> "$PGDATA/postgresql.conf"
echo "host all hba_edit 10.9.8.7/32 reject" >> "$PGDATA/pg_hba.conf"
pg_ctl -D "$PGDATA" -m fast -w restart
if pg_isready -q -h 127.0.0.1 -p "$PGPORT" -t 2; then echo "the restarted server listens on TCP" >&2; exit 1; fi
docker_process_sql -c 'CREATE EXTENSION pg_stat_statements'
"#,
    );
    node.script(
        "02-helpers.sh",
        b"docker_temp_server_stop\ndocker_temp_server_start\ndocker_process_sql -c 'CREATE TABLE after_restart (x int)'\n",
    );
    node.script("03-after.sql", b"INSERT INTO after_restart VALUES (1);");
    node.start();
    assert_eq!(node.query_one("current_setting('shared_preload_libraries')"), "pg_stat_statements");
    assert_eq!(node.query_one("(SELECT count(*) >= 0 FROM pg_stat_statements)"), "true");
    assert_eq!(node.query_one("(SELECT count(*) FROM after_restart)"), "1");
    let hba = fs::read_to_string(node.pgdata.join("pg_hba.conf")).unwrap();
    assert!(hba.contains("hba_edit 10.9.8.7/32 reject"), "{hba}");
    assert!(!node.pgdata.join(INITIALISING).exists());
    assert!(node.output().contains("restarted the temporary server; following it"), "{}", node.output());
    assert_eq!(node.stop(), 0);
    // Every server of the bootstrap is gone, the followed one included.
    let pgdata = node.pgdata.display().to_string();
    assert!(processes().iter().all(|p| !p.cmdline.contains(&pgdata) || p.state == 'Z'), "leftover servers");
    assert_eq!(node.controldata_state(), "shut down");
}

#[test]
fn a_script_that_leaves_the_server_stopped_is_named() {
    let mut node = Node::new("script-stops");
    node.script("01-stop.sh", b"pg_ctl -D \"$PGDATA\" -m fast -w stop\n");
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("01-stop.sh\" stopped the temporary server and did not start it again"), "{out}");
    assert!(node.pgdata.join(INITIALISING).exists());
}

#[test]
fn a_script_that_starts_the_real_configuration_is_stopped_and_named() {
    let mut node = Node::new("script-starts");
    // `pg_ctl start` after a stop reads postgresql.conf: TCP, the real pg_hba.conf.
    node.script("01-start.sh", b"pg_ctl -D \"$PGDATA\" -m fast -w stop\npg_ctl -D \"$PGDATA\" -w -l /dev/null start\n");
    let (code, out) = node.run_to_exit(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("01-start.sh\" started a server with the real configuration"), "{out}");
    let pgdata = node.pgdata.display().to_string();
    assert!(processes().iter().all(|p| !p.cmdline.contains(&pgdata) || p.state == 'Z'), "the server was left running");
    assert!(node.pgdata.join(INITIALISING).exists());
}

#[test]
fn ensure_initdb_initialises_once_and_exits_under_the_official_names() {
    let mut node = Node::new("ensure");
    node.script("01.sql", b"CREATE TABLE seeded (x int); INSERT INTO seeded VALUES (1);");
    let links = node.dir.0.join("bin");
    fs::create_dir_all(&links).unwrap();
    for name in ["docker-ensure-initdb.sh", "docker-enforce-initdb.sh", "docker-entrypoint.sh"] {
        std::os::unix::fs::symlink(BIN, links.join(name)).unwrap();
    }
    let run = |node: &mut Node, name: &str, args: &[&str]| {
        let program = links.join(name).display().to_string();
        let mut argv = vec![program.as_str()];
        argv.extend(args);
        let status = node.command_line(&argv).status().unwrap();
        (status.code().unwrap_or(-1), node.output())
    };
    let (code, out) = run(&mut node, "docker-ensure-initdb.sh", &["postgres"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("exiting without starting postgres"), "{out}");
    assert!(node.pgdata.join("PG_VERSION").exists() && !node.pgdata.join(INITIALISING).exists());
    assert_eq!(node.controldata_state(), "shut down");
    let (code, out) = run(&mut node, "docker-ensure-initdb.sh", &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("already holds a cluster; nothing to initialise"), "{out}");
    let (code, out) = run(&mut node, "docker-enforce-initdb.sh", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("already holds a cluster; enforce-initdb initialises only an empty one"), "{out}");
    // The name derived images use as their ENTRYPOINT serves.
    let program = links.join("docker-entrypoint.sh").display().to_string();
    node.child = Some(node.command_line(&[&program, "postgres"]).spawn().unwrap());
    node.wait_ready(Duration::from_secs(60));
    assert_eq!(node.query_one("(SELECT count(*) FROM seeded)"), "1");
    assert_eq!(node.stop(), 0);
}

#[test]
fn version_is_postgres_version_as_in_the_official_image() {
    let node = Node::new("version");
    let (code, out) = node.tool(&["--version"]);
    let postgres = Command::new(pg_bindir().join("postgres")).arg("--version").output().unwrap();
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, String::from_utf8_lossy(&postgres.stdout));
    assert!(out.starts_with("postgres (PostgreSQL) "), "{out}");
}

#[test]
fn a_small_dev_shm_is_warned_about() {
    let mut node = Node::new("shm");
    // A private mount namespace with Docker's default /dev/shm of 64 MB.
    let wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c"];
    let mount = "mount -t tmpfs -o size=64m shm /dev/shm && exec \"$@\"";
    node.spawn_wrapped(&[&wrapper[..], &[mount, "sh"]].concat(), &[]).wait_ready(Duration::from_secs(60));
    let said = node.output();
    assert!(said.contains("/dev/shm is small") && said.contains("size_mb=64") && said.contains("--shm-size"), "{said}");
    assert_eq!(node.stop(), 0);
    // This machine's own /dev/shm (half its memory) is not.
    node.start();
    assert!(!node.output().contains("/dev/shm is small"), "{}", node.output());
    assert_eq!(node.stop(), 0);
}

/// Runs as `uid`:`gid` with no supplementary groups, as `docker run --user uid:gid` does.
fn as_user(uid: u32, gid: u32) -> Vec<String> {
    vec!["setpriv".into(), format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into()]
}

#[test]
fn an_arbitrary_uid_without_a_passwd_entry_gets_a_clear_refusal_then_runs() {
    let mut node = Node::new("uid");
    // A volume as the image ships it: world-writable, sticky, owned by someone else.
    let volume = node.dir.0.join("volume");
    fs::create_dir(&volume).unwrap();
    fs::set_permissions(&volume, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir(node.socket_dir()).unwrap();
    fs::set_permissions(node.socket_dir(), fs::Permissions::from_mode(0o3777)).unwrap();
    node.pgdata = volume.clone();
    node.set("PGDATA", &volume.display().to_string());
    node.script(
        "01.sh",
        b"psql -c 'CREATE TABLE made_by (who text)' -c \"INSERT INTO made_by VALUES (current_user)\"\n",
    );
    let wrapper = as_user(ARBITRARY_UID, 0);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();

    // A data directory of another uid, closed to others (0700): refused in one line, before
    // anything tries to list it.
    let foreign = node.dir.0.join("foreign");
    fs::create_dir(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(999), Some(999)).unwrap();
    fs::set_permissions(&foreign, fs::Permissions::from_mode(0o700)).unwrap();
    node.set("PGDATA", &foreign.display().to_string());
    node.spawn_wrapped(&wrapper, &[]);
    let (code, _) = node.wait_exit(Duration::from_secs(30));
    assert_eq!(code, 1, "{}", node.output());
    assert!(node.output().contains("belongs to uid 999, and this container runs as uid 12345"), "{}", node.output());
    node.set("PGDATA", &volume.display().to_string());

    // The volume's root belongs to root: postgres could never use it as this uid.
    node.spawn_wrapped(&wrapper, &[]);
    let (code, _) = node.wait_exit(Duration::from_secs(30));
    let out = node.output();
    assert_eq!(code, 1, "{out}");
    let suggested = format!("PGDATA={:?}", volume.join("pgdata"));
    assert!(
        out.contains("belongs to uid 0, and this container runs as uid 12345") && out.contains(&suggested),
        "{out}"
    );
    assert_eq!(out.lines().filter(|l| l.contains("ERROR")).count(), 1, "{out}");
    assert_eq!(fs::read_dir(&volume).unwrap().count(), 0, "the refused volume was touched");

    // The official image's advice: a subdirectory, which this uid creates as its own.
    node.pgdata = volume.join("pgdata");
    node.set("PGDATA", &node.pgdata.display().to_string());
    node.spawn_wrapped(&wrapper, &[]).wait_ready(Duration::from_secs(60));
    assert_eq!(node.query_one("(SELECT who FROM made_by)"), "postgres");
    let meta = fs::metadata(node.pgdata.join("PG_VERSION")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (ARBITRARY_UID, 0));
    assert_eq!(fs::metadata(&node.pgdata).unwrap().mode() & 0o777, 0o700);
    assert!(node.output().contains("this uid has no entry in /etc/passwd; naming it postgres"), "{}", node.output());
    // Its own uid cannot read the entrypoint's environment (the passwords): not dumpable.
    let mut peek = Command::new(wrapper[0]);
    peek.args(&wrapper[1..]).arg("cat").arg(format!("/proc/{}/environ", node.pid()));
    let peek = peek.output().unwrap();
    assert!(!peek.status.success(), "the same uid read PID 1's environment");
    assert!(!String::from_utf8_lossy(&peek.stdout).contains("POSTGRES_PASSWORD"));
    assert_eq!(node.stop(), 0);
    // Restarts without a password: the volume is initialised.
    node.unset("POSTGRES_PASSWORD");
    let password = PASSWORD.to_string();
    node.spawn_wrapped(&wrapper, &[]);
    node.set("POSTGRES_PASSWORD", &password).wait_ready(Duration::from_secs(60));
    assert_eq!(node.stop(), 0);
}
