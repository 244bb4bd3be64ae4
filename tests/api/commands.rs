//! Commands that read or tend the database open it as it is: pointed at the wrong
//! place, they refuse with exit 2 and create nothing; pointed at the right one, they
//! name what they opened, never a password.

use crate::helpers::*;
use crate::on_both_databases;

/// Every command but `serve` and `migrate` that opens the database.
const COMMANDS: [&[&str]; 6] = [
    &["audit", "verify"],
    &[
        "audit",
        "export",
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
    ],
    &["audit", "checkpoint"],
    &["deliveries", "list"],
    &[
        "report",
        "programme",
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
    ],
    &["retention", "run"],
];

fn run(url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_thrive-gateway"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("THRIVE_ENV", "development")
        .env("THRIVE__DATABASE__URL", url)
        .args(args)
        .output()
        .unwrap()
}

/// Each command refuses `url` with exit 2, saying `why` and that nothing changed.
fn assert_refused(url: &str, why: &str) {
    for args in COMMANDS {
        let out = run(url, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
        assert!(
            stderr.contains("nothing was created or changed"),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed a result");
    }
}

async fn tables(db: Db, url: &str) -> String {
    let sql = match db {
        Db::Sqlite => "SELECT CAST(count(*) AS TEXT) FROM sqlite_master WHERE type = 'table'",
        Db::Postgres => {
            "SELECT count(*)::text FROM information_schema.tables WHERE table_schema = 'public'"
        }
    };
    query_text(db, url, sql).await[0][0].clone().unwrap()
}

async fn read_commands_refuse_a_database_that_is_missing_or_not_migrated(db: Db) {
    let (url, _database) = fresh_database(db).await;

    // Nothing there: no file, no database is made.
    let (missing, _dir) = match db {
        Db::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("wrong.db");
            (format!("sqlite://{}", path.display()), Some(dir))
        }
        Db::Postgres => (
            format!(
                "{}/thrive_test_missing_{}",
                postgres_base(),
                uuid::Uuid::new_v4().simple()
            ),
            None,
        ),
    };
    let engine = match db {
        Db::Sqlite => "there is no SQLite database",
        Db::Postgres => "there is no PostgreSQL database thrive_test_missing_",
    };
    assert_refused(&missing, engine);
    match (db, &_dir) {
        (Db::Sqlite, Some(dir)) => assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no file was created"
        ),
        _ => {
            let name = missing.rsplit('/').next().unwrap();
            let found = query_text(
                db,
                &format!("{}/postgres", postgres_base()),
                &format!("SELECT datname FROM pg_database WHERE datname = '{name}'"),
            )
            .await;
            assert!(found.is_empty(), "no database was created");
        }
    }

    // A database that is there but empty (SQLite: an empty file): no table is made.
    if db == Db::Sqlite {
        let path = url.trim_start_matches("sqlite://");
        std::fs::write(path, b"").unwrap();
    }
    assert_refused(&url, "holds no thrive-gateway tables");
    assert_eq!(tables(db, &url).await, "0", "no table was created");

    // A database one migration behind: told to migrate, and left as it was. (The last
    // migration's row is set aside and put back, standing for an older gateway's.)
    let migrate = run(&url, &["migrate"]);
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let count = "SELECT CAST(count(*) AS TEXT) FROM _sqlx_migrations";
    execute_sql(
        db,
        &url,
        "CREATE TABLE set_aside AS SELECT * FROM _sqlx_migrations \
         WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .await;
    execute_sql(
        db,
        &url,
        "DELETE FROM _sqlx_migrations WHERE version IN (SELECT version FROM set_aside)",
    )
    .await;
    let behind = query_text(db, &url, count).await;
    assert_refused(&url, "run `thrive-gateway migrate` first");
    assert_eq!(
        query_text(db, &url, count).await,
        behind,
        "the refused commands did not migrate"
    );
    execute_sql(
        db,
        &url,
        "INSERT INTO _sqlx_migrations SELECT * FROM set_aside",
    )
    .await;
    execute_sql(db, &url, "DROP TABLE set_aside").await;

    // A database migrated by a newer gateway: refused too, not taken for this one's.
    execute_sql(
        db,
        &url,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         SELECT 99990101000000, 'from a newer gateway', success, checksum, execution_time \
         FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .await;
    assert_refused(&url, "newer than this gateway's");
    execute_sql(
        db,
        &url,
        "DELETE FROM _sqlx_migrations WHERE version = 99990101000000",
    )
    .await;

    // At the current migration: every command runs and names the database it opened.
    let named = match db {
        Db::Sqlite => format!("SQLite database {}", url.trim_start_matches("sqlite://")),
        Db::Postgres => {
            let name = url.rsplit('/').next().unwrap();
            format!("PostgreSQL database {name} on 127.0.0.1:5432")
        }
    };
    for args in COMMANDS {
        let out = run(&url, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(&named), "{args:?}: {stderr}");
    }
}

/// A PostgreSQL password in the URL never reaches the terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_names_the_postgres_database_without_its_password() {
    let url = format!(
        "postgres://thrive:s3cret-Pa55@127.0.0.1:1/thrive_test_{}",
        uuid::Uuid::new_v4().simple()
    );
    let out = run(&url, &["deliveries", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("PostgreSQL database thrive_test_"),
        "{stderr}"
    );
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

on_both_databases!(read_commands_refuse_a_database_that_is_missing_or_not_migrated);

/// Every command fails the same way: exit 2 for what was given wrong, exit 1 for work
/// that failed, each as one line naming the command, and nothing on standard output.
async fn failures_exit_by_kind_in_one_line_naming_the_command(db: Db) {
    let (url, _database) = fresh_database(db).await;
    let migrate = run(&url, &["migrate"]);
    assert!(migrate.status.success());
    let cases: [(&[&str], i32, &str); 5] = [
        (
            &[
                "report",
                "extract",
                "--from",
                "someday",
                "--to",
                "2100-01-01",
            ],
            2,
            "thrive-gateway report extract: ",
        ),
        (
            &["audit", "export", "--from", "2000-01-01", "--to", "later"],
            2,
            "thrive-gateway audit export: --from and --to must be dates",
        ),
        (
            &["deliveries", "replay", "no-such-delivery"],
            1,
            "thrive-gateway deliveries replay: no dead letter has id no-such-delivery",
        ),
        (
            &["deliveries", "resolve", "no-such-delivery"],
            1,
            "thrive-gateway deliveries resolve: no dead letter has id no-such-delivery",
        ),
        (
            &["audit", "verify-export", "/nonexistent/export.json"],
            2,
            "thrive-gateway audit verify-export: cannot read /nonexistent/export.json",
        ),
    ];
    for (args, code, line) in cases {
        let out = run(&url, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        let failure: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("thrive-gateway ") && !l.contains(" database "))
            .collect();
        assert_eq!(failure.len(), 1, "{args:?}: {stderr}");
        assert!(failure[0].starts_with(line), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed a result");
    }
}

on_both_databases!(failures_exit_by_kind_in_one_line_naming_the_command);
