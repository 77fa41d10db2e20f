//! `fleetmap-coordinator keys create|list|revoke`: manages client API keys in the coordinator's
//! database. A new key is printed once, on standard output; only its hash is stored.

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use fleetmap_coordinator::keys::table::{self, KeyRecord};

/// What to do with the keys.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Makes a key and prints it once (store it: it cannot be shown again).
    Create {
        /// Who or what the key is for (letters, digits, `.`, `_`, `-`, `@`), unique among
        /// active keys.
        #[arg(long)]
        name: String,
    },
    /// Lists every key: id, name, when made, when revoked (never the keys themselves).
    List {
        /// One JSON object per key instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revokes the active key with this name or id; clients using it are refused within a
    /// second.
    Revoke {
        /// The key's name or id (as `keys list` shows them).
        name_or_id: String,
    },
}

/// Applies `action` to the keys in the database at `db`.
pub fn run(action: Action, db: &Path) -> anyhow::Result<()> {
    match action {
        Action::Create { name } => {
            let conn = table::open(db, true)?;
            let new = table::create(&conn, db, &name)?;
            eprintln!(
                "made key {} for {name}; it is shown once, below: hand it to its user (`fleetmap login --api-key KEY` or FLEETMAP_API_KEY)",
                new.id
            );
            println!("{}", new.key);
        }
        Action::List { json } => {
            let conn = table::open(db, false)?;
            let keys = table::list(&conn, db)?;
            if json {
                for key in &keys {
                    println!(
                        "{}",
                        serde_json::to_string(&as_json(key)).context("encoding")?
                    );
                }
            } else {
                print!("{}", render(&keys));
            }
        }
        Action::Revoke { name_or_id } => {
            let conn = table::open(db, false)?;
            let key = table::revoke(&conn, db, &name_or_id)?;
            println!("revoked key {} ({})", key.id, key.name);
        }
    }
    Ok(())
}

fn as_json(key: &KeyRecord) -> serde_json::Value {
    serde_json::json!({
        "id": key.id,
        "name": key.name,
        "created_at_ms": key.created_at_ms,
        "revoked_at_ms": key.revoked_at_ms,
    })
}

/// The human-readable table.
fn render(keys: &[KeyRecord]) -> String {
    if keys.is_empty() {
        return "no keys; make one with `fleetmap-coordinator keys create --name NAME`\n".into();
    }
    let mut out = format!(
        "{:<12}  {:<24}  {:<19}  {}\n",
        "ID", "NAME", "CREATED", "STATE"
    );
    for key in keys {
        let state = match key.revoked_at_ms {
            Some(ms) => format!("revoked {}", utc(ms)),
            None => "active".to_string(),
        };
        out.push_str(&format!(
            "{:<12}  {:<24}  {:<19}  {}\n",
            key.id,
            key.name,
            utc(key.created_at_ms),
            state
        ));
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time in ms.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_ids_names_and_states_in_utc() {
        let keys = vec![
            KeyRecord {
                id: "0123456789ab".into(),
                name: "alice".into(),
                created_at_ms: 1_700_000_000_000,
                revoked_at_ms: None,
            },
            KeyRecord {
                id: "ba9876543210".into(),
                name: "ci".into(),
                created_at_ms: 0,
                revoked_at_ms: Some(86_400_000 + 3_661_000),
            },
        ];
        let text = render(&keys);
        assert!(text.contains("0123456789ab  alice"), "{text}");
        assert!(text.contains("2023-11-14 22:13:20  active"), "{text}");
        assert!(
            text.contains("1970-01-01 00:00:00  revoked 1970-01-02 01:01:01"),
            "{text}"
        );
        assert!(render(&[]).contains("keys create"));
    }
}
