//! `tde sql`: statements on an encrypted SQLite database from the shell (feature `sqlite`).
#![cfg(feature = "sqlite")]

mod common;

use common::{Cli, contains, files_below};

#[test]
fn tde_sql_creates_runs_and_prints_rows_like_the_sqlite3_shell() {
    let cli = Cli::new();
    let db = cli.path("clinic.sqlite");
    cli.ok(&[
        "sql",
        &db,
        "CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT, score REAL);
         INSERT INTO p VALUES (1, 'PATIENT-MARKER Ada', 9.5), (2, 'Alan', NULL);",
    ]);
    assert_eq!(
        cli.ok(&["sql", &db, "SELECT * FROM p ORDER BY id"]),
        "1|PATIENT-MARKER Ada|9.5\n2|Alan|\n"
    );
    assert_eq!(
        cli.ok_in(&["sql", &db], b"SELECT count(*), max(score) FROM p;"),
        "2|9.5\n"
    );
    let err = cli.fails(&["sql", &db, "SELECT * FROM nope"]);
    assert!(err.contains("no such table"), "{err}");
    for (path, bytes) in files_below(cli.tmp.path()) {
        assert!(
            !contains(&bytes, b"PATIENT-MARKER"),
            "{} holds plaintext",
            path.display()
        );
    }
}
