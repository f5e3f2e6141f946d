//! The image as a drop-in for the official `postgres` image, on the real Docker engine:
//! its layout, its volumes, `--user`, its init-script conventions and `_FILE` variables,
//! derived images and init containers. `#[ignore]`d in the ordinary suite; `docker/e2e.sh`
//! runs it against the PostgreSQL 15 and 17 images.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::docker::*;

/// A host directory for bind mounts, removed at the end.
struct HostDir(std::path::PathBuf);

impl HostDir {
    fn new(name: &str) -> HostDir {
        let dir = std::env::temp_dir().join(format!("pgep-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        HostDir(dir)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }

    fn write(&self, name: &str, contents: &str, mode: u32) {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn logs(id: &str) -> String {
    text(&run("docker", &["logs", id]))
}

/// Waits for a container to exit; its exit code.
fn exit_code(id: &str) -> i32 {
    docker(&["wait", id]).parse().unwrap()
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn the_image_has_the_official_layout() {
    let image = image();
    assert!(docker(&["run", "--rm", &image, "--version"]).starts_with("postgres (PostgreSQL) "));
    // (Debian's postgresql-common also puts the account in ssl-cert, as in the official image.)
    let id = docker(&["run", "--rm", &image, "id", "postgres"]);
    assert!(id.starts_with("uid=999(postgres) gid=999(postgres) groups=999(postgres)"), "{id}");
    let layout = docker(&[
        "run",
        "--rm",
        &image,
        "bash",
        "-c",
        "command -v pg_ctl initdb | xargs -n1 basename; echo \"$LANG\"; locale -a | grep -ix en_US.utf8; \
         stat -c '%a %U' /var/run/postgresql /var/lib/postgresql /var/lib/postgresql/data; \
         for n in docker-entrypoint.sh docker-ensure-initdb.sh docker-enforce-initdb.sh; do readlink \"$(command -v $n)\"; done",
    ]);
    let expected = "pg_ctl\ninitdb\nen_US.utf8\nen_US.utf8\n3777 postgres\n1777 postgres\n1777 postgres\n\
                    pg-entrypoint\npg-entrypoint\npg-entrypoint";
    assert_eq!(layout, expected);
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn a_volume_made_by_the_official_image_starts_with_its_data_and_no_password() {
    let image = image();
    let mut c = Cluster::new("official-volume");
    let volume = c.volume("data");
    // What the official entrypoint does on first boot, with this image's binaries: initdb as
    // uid 999 under LANG=en_US.utf8, a password login for TCP, then some data.
    let made = run(
        "docker",
        &[
            "run",
            "--rm",
            "--user",
            "999:999",
            "-e",
            "LANG=en_US.utf8",
            "-e",
            &format!("PW={SECRET}"),
            "-v",
            &format!("{volume}:/var/lib/postgresql/data"),
            "--entrypoint",
            "bash",
            &image,
            "-c",
            "set -e; printf '%s\\n' \"$PW\" > /tmp/pw; initdb -D \"$PGDATA\" --username=postgres --pwfile=/tmp/pw >/dev/null; \
             echo 'host all all all scram-sha-256' >> \"$PGDATA/pg_hba.conf\"; \
             echo \"CREATE TABLE kept AS SELECT 'précieux'::text AS v;\" | postgres --single -D \"$PGDATA\" postgres >/dev/null",
        ],
    );
    assert!(made.status.success(), "{}", text(&made));
    // Our image on it, without POSTGRES_PASSWORD: the volume is initialised.
    let id = c.run_detached("db", &args(&["-v", &format!("{volume}:/var/lib/postgresql/data")]), &image, &[]);
    wait_healthy(&id, Duration::from_secs(120));
    assert_eq!(sql(&id, "SELECT v FROM kept"), "précieux");
    assert_eq!(sql(&id, "SHOW lc_messages"), "en_US.utf8");
    assert_eq!(sql(&id, "SELECT datcollate FROM pg_database WHERE datname = 'postgres'"), "en_US.utf8");
    let tcp = docker(&[
        "exec",
        "-e",
        &format!("PGPASSWORD={SECRET}"),
        &id,
        "psql",
        "-X",
        "-A",
        "-t",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-c",
        "SELECT 'password login'",
    ]);
    assert_eq!(tcp, "password login");
    // Same uid as the official image: nothing to chown.
    assert_eq!(docker(&["exec", &id, "stat", "-c", "%u", "/var/lib/postgresql/data/PG_VERSION"]), "999");
    assert!(!logs(&id).contains("fixing ownership"), "{}", logs(&id));
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn the_user_flag_works_as_in_the_official_image() {
    let image = image();
    let mut c = Cluster::new("user-flag");
    let password = format!("POSTGRES_PASSWORD={SECRET}");
    let healthy_as = |c: &mut Cluster, name: &str, mount: String, user: &str, extra: &[&str]| {
        let mut a = args(&["--user", user, "-e", &password, "-v", &mount]);
        a.extend(args(extra));
        let id = c.run_detached(name, &a, &image, &[]);
        wait_healthy(&id, Duration::from_secs(120));
        let who =
            sql(&id, "SELECT current_user || ' ' || datcollate FROM pg_database WHERE datname = current_database()");
        assert_eq!(who, "postgres en_US.utf8", "{name}");
        id
    };
    // 999:999, the official image's own account, on a named volume and on a bind mount.
    let named = format!("{}:/var/lib/postgresql/data", c.volume("named"));
    healthy_as(&mut c, "named-999", named.clone(), "999:999", &[]);
    let bind_999 = HostDir::new("bind-999");
    std::os::unix::fs::chown(&bind_999.0, Some(999), Some(999)).unwrap();
    healthy_as(&mut c, "bind-999", format!("{}:/var/lib/postgresql/data", bind_999.path()), "999:999", &[]);

    // An arbitrary uid on a named volume: the volume's root belongs to 999, so postgres could
    // never use it; refused in one line with the official image's advice, a subdirectory.
    let arbitrary = format!("{}:/var/lib/postgresql/data", c.volume("arbitrary"));
    let refused =
        c.run_detached("refused-12345", &args(&["--user", "12345", "-e", &password, "-v", &arbitrary]), &image, &[]);
    assert_eq!(exit_code(&refused), 1, "{}", logs(&refused));
    let said = logs(&refused);
    assert!(
        said.contains("belongs to uid 999, and this container runs as uid 12345")
            && said.contains("PGDATA=\"/var/lib/postgresql/data/pgdata\""),
        "{said}"
    );
    let id = healthy_as(&mut c, "sub-12345", arbitrary, "12345", &["-e", "PGDATA=/var/lib/postgresql/data/pgdata"]);
    assert_eq!(docker(&["exec", &id, "stat", "-c", "%u:%g %a", "/var/lib/postgresql/data/pgdata"]), "12345:0 700");

    // OpenShift style, uid with group 0, on a bind mount that uid owns.
    let bind = HostDir::new("bind-12345");
    std::os::unix::fs::chown(&bind.0, Some(12345), Some(0)).unwrap();
    healthy_as(&mut c, "bind-12345", format!("{}:/var/lib/postgresql/data", bind.path()), "12345:0", &[]);
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn init_scripts_and_file_variables_written_for_the_official_image_work() {
    let image = image();
    let mut c = Cluster::new("official-scripts");
    let secrets = HostDir::new("file-secrets");
    // Root's and 0600, as docker/up.sh writes its secrets.
    secrets.write("password", &format!("{SECRET}\n"), 0o600);
    secrets.write("user", "boss\n", 0o600);
    secrets.write("db", "shop\n", 0o600);
    secrets.write("initdb_args", "--data-checksums\n", 0o600);
    let scripts = HostDir::new("official-initdb");
    // Sourced (not executable), bash, the official helper.
    scripts.write(
        "01-sourced.sh",
        "names=(alpha beta)\ndocker_process_sql <<-EOSQL\n\tCREATE TABLE greet AS SELECT '${names[1]}'::text AS who;\nEOSQL\n",
        0o644,
    );
    // The recipe for shared_preload_libraries: edit the real file, restart with pg_ctl.
    scripts.write(
        "02-preload.sh",
        "echo \"shared_preload_libraries = 'pg_stat_statements'\" >> \"$PGDATA/postgresql.conf\"\n\
         pg_ctl -D \"$PGDATA\" -m fast -w restart\n\
         docker_process_sql -c 'CREATE EXTENSION pg_stat_statements'\n",
        0o644,
    );
    // The official documentation's example, executable.
    scripts.write(
        "03-example.sh",
        "#!/bin/bash\nset -e\npsql -v ON_ERROR_STOP=1 --username \"$POSTGRES_USER\" --dbname \"$POSTGRES_DB\" <<-EOSQL\n\
         \tCREATE USER docker;\n\tCREATE DATABASE docker;\n\tGRANT ALL PRIVILEGES ON DATABASE docker TO docker;\nEOSQL\n",
        0o755,
    );
    let a = args(&[
        "-v",
        &format!("{}:/run/secrets/pg:ro", secrets.path()),
        "-v",
        &format!("{}:/docker-entrypoint-initdb.d:ro", scripts.path()),
        "-e",
        "POSTGRES_PASSWORD_FILE=/run/secrets/pg/password",
        "-e",
        "POSTGRES_USER_FILE=/run/secrets/pg/user",
        "-e",
        "POSTGRES_DB_FILE=/run/secrets/pg/db",
        "-e",
        "POSTGRES_INITDB_ARGS_FILE=/run/secrets/pg/initdb_args",
    ]);
    let id = c.run_detached("db", &a, &image, &[]);
    wait_healthy(&id, Duration::from_secs(120));
    let q = |query: &str| docker(&["exec", &id, "psql", "-X", "-A", "-t", "-U", "boss", "-d", "shop", "-c", query]);
    assert_eq!(q("SELECT current_user || '@' || current_database()"), "boss@shop");
    assert_eq!(q("SHOW data_checksums"), "on");
    assert_eq!(q("SELECT who FROM greet"), "beta");
    assert_eq!(q("SELECT count(*) >= 0 FROM pg_stat_statements"), "t");
    assert_eq!(q("SELECT count(*) FROM pg_roles WHERE rolname = 'docker'"), "1");
    assert!(!logs(&id).contains(SECRET), "the password reached the log");
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn derived_images_and_init_containers_use_the_official_names() {
    let image = image();
    let mut c = Cluster::new("official-names");
    let volume = format!("{}:/var/lib/postgresql/data", c.volume("data"));
    let password = format!("POSTGRES_PASSWORD={SECRET}");
    // An init container: initialises the volume and exits 0, twice.
    let init = |c: &mut Cluster, name: &str| {
        let id = c.run_detached(
            name,
            &args(&["-e", &password, "-v", &volume, "--entrypoint", "docker-ensure-initdb.sh"]),
            &image,
            &[],
        );
        assert_eq!(exit_code(&id), 0, "{}", logs(&id));
        logs(&id)
    };
    assert!(init(&mut c, "init-1").contains("exiting without starting postgres"));
    assert!(init(&mut c, "init-2").contains("nothing to initialise"));
    // A derived image written for the official one.
    let derived = format!("pgep-derived-{}", std::process::id());
    let mut build =
        Command::new("docker").args(["build", "-q", "-t", &derived, "-"]).stdin(Stdio::piped()).spawn().unwrap();
    let dockerfile = format!("FROM {image}\nENTRYPOINT [\"docker-entrypoint.sh\"]\nCMD [\"postgres\"]\n");
    build.stdin.take().unwrap().write_all(dockerfile.as_bytes()).unwrap();
    assert!(build.wait().unwrap().success());
    let id = c.run_detached("derived", &args(&["-v", &volume]), &derived, &[]);
    wait_healthy(&id, Duration::from_secs(120));
    assert_eq!(sql(&id, "SELECT 'served'"), "served");
    docker(&["rm", "-f", &id]);
    let _ = run("docker", &["rmi", "-f", &derived]);
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn a_volume_at_the_upstream_images_data_path_keeps_the_database() {
    // A compose file written for the image this project replaces mounts its volume at
    // /usr/local/pgsql/data and sets no PGDATA: the data must land in that volume.
    let mut c = Cluster::new("upstream-path");
    let volume = c.volume("data");
    let run_args =
        args(&["-v", &format!("{volume}:/usr/local/pgsql/data"), "-e", &format!("POSTGRES_PASSWORD={SECRET}")]);
    let first = c.run_detached("first", &run_args, &image(), &[]);
    wait_healthy(&first, Duration::from_secs(120)); // the healthcheck's `pg-entrypoint health` finds it there
    assert_eq!(sql(&first, "SHOW data_directory"), "/usr/local/pgsql/data");
    assert!(logs(&first).contains("is a mounted volume (the upstream image's data directory)"), "{}", logs(&first));
    sql(&first, "CREATE TABLE kept AS SELECT 42 AS v");
    // The container recreated on the same volume: the rows are there.
    docker(&["rm", "-f", "-v", &first]);
    let second = c.run_detached("second", &run_args, &image(), &[]);
    wait_healthy(&second, Duration::from_secs(120));
    assert_eq!(sql(&second, "SELECT v FROM kept"), "42");
    // A volume holding data at the official path too: which one is meant is unclear, refused.
    docker(&["rm", "-f", "-v", &second]);
    let official = c.volume("official");
    let mut both = run_args.clone();
    both.extend(args(&["-v", &format!("{official}:/var/lib/postgresql/data")]));
    docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{official}:/var/lib/postgresql/data"),
        &image(),
        "bash",
        "-c",
        "touch /var/lib/postgresql/data/something",
    ]);
    let third = c.run_detached("third", &both, &image(), &[]);
    assert_eq!(exit_code(&third), 78);
    assert!(
        logs(&third).contains("PGDATA: is /var/lib/postgresql/data, which holds data, and /usr/local/pgsql/data"),
        "{}",
        logs(&third)
    );
}

/// `-e` arguments for `docker run` from (name, value) pairs.
fn env_args(vars: &[(&str, &str)]) -> Vec<String> {
    vars.iter().flat_map(|(k, v)| ["-e".to_string(), format!("{k}={v}")]).collect()
}

#[test]
#[ignore = "needs the Docker engine and PGEP_IMAGE: run docker/e2e.sh"]
fn the_upstream_images_examples_run_with_the_image_swapped() {
    let mut c = Cluster::new("upstream-examples");
    // Its quick start and its custom configuration: a host directory at its data path.
    let host_dir = std::env::temp_dir().join(format!("pgep-upstream-data-{}", std::process::id()));
    std::fs::create_dir_all(&host_dir).unwrap();
    let mut single_args = args(&["-v", &format!("{}:/usr/local/pgsql/data", host_dir.display())]);
    single_args.extend(env_args(&[
        ("POSTGRES_PASSWORD", "secret"),
        ("POSTGRESQL_CONFIG_MAX_CONNECTIONS", "2000"),
        ("POSTGRESQL_CONFIG_SHARED_BUFFERS", "16GB"),
        ("POSTGRESQL_CONFIG_EFFECTIVE_CACHE_SIZE", "32GB"),
    ]));
    let single = c.run_detached("single", &single_args, &image(), &[]);
    wait_healthy(&single, Duration::from_secs(120));
    let shown = sql(&single, "SELECT string_agg(current_setting(n), ',') FROM unnest(ARRAY['max_connections', 'shared_buffers', 'effective_cache_size', 'data_directory']) n");
    assert_eq!(shown, "2000,16GB,32GB,/usr/local/pgsql/data");
    assert!(host_dir.join("PG_VERSION").exists(), "the cluster is in the user's directory");
    docker(&["rm", "-f", "-v", &single]);
    let _ = std::fs::remove_dir_all(&host_dir);

    // Its native HA example: a primary and two replicas, as it sets them.
    let node = |role: &'static str| -> Vec<(&'static str, &'static str)> {
        let mut vars = vec![
            ("HA_MODE", "native"),
            ("REPLICATION_ROLE", role),
            ("REPLICATION_USER", "replicator"),
            ("REPLICATION_PASSWORD", "replicator_password"),
            ("POSTGRES_USER", "postgres"),
            ("POSTGRES_PASSWORD", "secret"),
            ("EXTERNAL_ACCESS_ENABLE", "true"),
            ("EXTERNAL_ACCESS_METHOD", "md5"),
            ("POSTGRESQL_LISTEN_ADDRESSES", "*"),
        ];
        if role == "replica" {
            vars.extend([("PRIMARY_HOST", "placeholder"), ("PRIMARY_PORT", "5432")]);
        }
        vars
    };
    let at_upstream_path = |volume: String| args(&["-v", &format!("{volume}:/usr/local/pgsql/data")]);
    // Its primary also sets PGBACKREST_ENABLE, with the upstream image's backup volume.
    let mut primary_args = at_upstream_path(c.volume("primary"));
    primary_args.extend(args(&["-v", &format!("{}:/usr/local/pgsql/backup", c.volume("backup"))]));
    primary_args.extend(env_args(&[node("primary").as_slice(), &[("PGBACKREST_ENABLE", "true")]].concat()));
    let primary = c.run_detached("primary", &primary_args, &image(), &[]);
    let mut replicas = Vec::new();
    for name in ["replica1", "replica2"] {
        let mut vars = node("replica");
        let primary_host = primary.clone();
        vars.retain(|(k, _)| *k != "PRIMARY_HOST");
        let mut replica_args = at_upstream_path(c.volume(name));
        replica_args.extend(env_args(&vars));
        replica_args.extend(env_args(&[("PRIMARY_HOST", primary_host.as_str())]));
        replicas.push(c.run_detached(name, &replica_args, &image(), &[]));
    }
    wait_healthy(&primary, Duration::from_secs(120));
    for replica in &replicas {
        wait_healthy(replica, Duration::from_secs(180));
    }
    sql(&primary, "CREATE TABLE upstream AS SELECT 7 AS v");
    for replica in &replicas {
        eventually_sql(replica, "SELECT v FROM upstream", "7");
        assert_eq!(sql(replica, "SHOW data_directory"), "/usr/local/pgsql/data");
    }
    let hba = docker(&["exec", &primary, "cat", "/usr/local/pgsql/data/pg_hba.conf"]);
    assert!(hba.contains("host all all 0.0.0.0/0 md5") && hba.contains("host all all ::/0 md5"), "{hba}");
    // Its backups go to the upstream image's backup volume.
    wait_for("the stanza is created", Duration::from_secs(90), || {
        text(&run("docker", &["exec", &primary, "pg-entrypoint", "status"])).contains("\"checked\"")
    });
    docker(&["exec", &primary, "pg-entrypoint", "backup", "full"]);
    let sets = docker(&["exec", &primary, "sh", "-c", "ls /usr/local/pgsql/backup/backup/main"]);
    assert!(sets.lines().any(|l| l.ends_with('F')), "{sets}");

    // Its Patroni example sets no REST API password: refused (anyone on the network could
    // reconfigure the cluster), naming it.
    let mut patroni_args = at_upstream_path(c.volume("patroni"));
    patroni_args.extend(env_args(&[
        ("PATRONI_ENABLE", "true"),
        ("PATRONI_SCOPE", "postgres-cluster"),
        ("PATRONI_NAME", "postgresql1"),
        ("PATRONI_REST_HOST", "0.0.0.0"),
        ("PATRONI_REST_PORT", "8008"),
        ("ETCD_HOST", "etcd"),
        ("ETCD_PORT", "2379"),
        ("POSTGRESQL_LISTEN_HOST", "0.0.0.0"),
        ("POSTGRESQL_PORT", "5432"),
        ("POSTGRESQL_CONNECT_HOST", "postgresql1"),
        ("POSTGRES_USER", "postgres"),
        ("POSTGRES_PASSWORD", "postgres_password"),
        ("PATRONI_REPLICATION_USER", "replicator"),
        ("PATRONI_REPLICATION_PASSWORD", "replicator_password"),
        ("EXTERNAL_ACCESS_ENABLE", "true"),
        ("EXTERNAL_ACCESS_METHOD", "md5"),
        ("PGBACKREST_ENABLE", "true"),
        ("PG_HBA_ADD_1", "host all all 172.18.0.0/16 trust"),
    ]));
    let patroni = c.run_detached("patroni", &patroni_args, &image(), &[]);
    assert_eq!(exit_code(&patroni), 78);
    let said = logs(&patroni);
    assert!(said.contains("PATRONI_RESTAPI_PASSWORD: is required with HA_MODE=patroni"), "{said}");
}
