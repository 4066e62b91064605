//! A PostgreSQL server of a test's or benchmark's own (the `dev` feature): a cluster made with Debian's `initdb` in a
//! temporary folder, started with `pg_ctl` on a free loopback port, stopped and removed
//! when dropped. Nothing shared or pre-existing is used. PostgreSQL refuses to run as
//! root; under root (CI) the cluster runs as the unprivileged user `satcosign-pg`, made
//! on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running private cluster.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    user: Option<&'static str>,
}

const USER: &str = "satcosign-pg";

/// Debian's server binaries (`/usr/lib/postgresql/<version>/bin`), newest first.
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Debian's postgresql is installed (scripts/test installs it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect("an initdb under /usr/lib/postgresql")
}

/// `program` as `user` (through `runuser`), or as ourselves.
fn command(user: Option<&str>, program: &Path) -> Command {
    match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn run(user: Option<&str>, program: &Path, args: &[&str]) {
    let out = command(user, program)
        .args(args)
        .output()
        .expect("run a PostgreSQL program");
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    /// Makes and starts a cluster; returns once it accepts connections.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let user = root.then_some(USER);
        if root
            && !Command::new("id")
                .arg(USER)
                .output()
                .is_ok_and(|o| o.status.success())
        {
            let _ = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    USER,
                ])
                .status();
        }
        let dir = tempfile::Builder::new()
            .prefix("satcosign-pg-")
            .tempdir()
            .expect("tempdir");
        if root {
            run(
                None,
                Path::new("chown"),
                &[USER, &dir.path().to_string_lossy()],
            );
        }
        let data = dir.path().join("data");
        let data_s = data.to_string_lossy().into_owned();
        run(
            user,
            &bin.join("initdb"),
            &[
                "-D",
                &data_s,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let pg = Postgres {
            dir,
            bin,
            port,
            user,
        };
        pg.resume();
        pg
    }

    /// Starts the server again after [`Postgres::stop`], on the same port and data; returns
    /// once it accepts connections.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        run(
            self.user,
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &self.dir.path().join("data").to_string_lossy(),
                "-o",
                &options,
                "-l",
                &log.to_string_lossy(),
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server (every connection is cut, nothing committed is lost); returns once
    /// it is down.
    pub fn stop(&self) {
        run(
            self.user,
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &self.dir.path().join("data").to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    /// Creates the empty database `name` (letters, digits and `_`) on the cluster; returns
    /// its connection string.
    pub async fn database(&self, name: &str) -> Result<String, crate::store::StoreError> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(crate::store::StoreError::Database(format!(
                "database name `{name}`: letters, digits and _ only"
            )));
        }
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .map_err(crate::postgres::db_err)?;
        let connection = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(crate::postgres::db_err)?;
        drop(client);
        let _ = connection.await;
        Ok(self
            .url()
            .replace("dbname=postgres", &format!("dbname={name}")))
    }

    /// A connection string for the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = command(self.user, &self.bin.join("pg_ctl"))
            .args([
                "-D",
                &data.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}
