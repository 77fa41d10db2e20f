//! The three layers: file values and environment values become the flags' defaults (the
//! environment's over the file's), so clap itself applies the command line on top.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, ArgMatches, Command, Parser};

use crate::error::ConfigError;
use crate::toml_value;

/// The flag (and the id of its argument) that names the settings file.
pub const CONFIG_FLAG: &str = "config";

/// Parses the process's arguments and environment into `A`, layered over the settings file;
/// on any problem prints one clear message and exits (code 2; 0 for `--help`/`--version`).
pub fn parse<A: Parser>(env_prefix: &str) -> A {
    let lookup = |name: &str| std::env::var(name).ok();
    match try_parse_from(std::env::args_os(), &lookup, env_prefix) {
        Ok(args) => args,
        Err(err) => err.exit(),
    }
}

/// [`parse`] with the arguments and the environment given, for tests and embedding.
pub fn try_parse_from<A, I, T>(
    argv: I,
    env: &dyn Fn(&str) -> Option<String>,
    env_prefix: &str,
) -> Result<A, ConfigError>
where
    A: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let mut command = with_config_flag(A::command(), env_prefix);
    let settable = settable_flags(&command);

    let mut defaults: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(path) =
        config_path(&argv).or_else(|| env(&var_name(env_prefix, CONFIG_FLAG)).map(PathBuf::from))
    {
        for (id, values) in file_values(&path, &settable, &command)? {
            defaults.insert(id, values);
        }
    }
    for (key, flag) in &settable {
        let name = var_name(env_prefix, key);
        if let Some(value) = env(&name) {
            let values = if flag.many {
                value.split(',').map(str::to_string).collect()
            } else {
                vec![value]
            };
            check_values(&command, &flag.id, &values, "the environment", &name)?;
            defaults.insert(flag.id.clone(), values);
        }
    }
    for (id, values) in defaults {
        command = command.mut_arg(id, |arg| arg.default_values(values).required(false));
    }
    let matches: ArgMatches = command.try_get_matches_from(argv)?;
    Ok(A::from_arg_matches(&matches)?)
}

/// A flag that the file and the environment can set.
struct Settable {
    id: String,
    many: bool,
}

/// Adds `--config` and the layering note to the service's command.
fn with_config_flag(command: Command, env_prefix: &str) -> Command {
    let note = format!(
        "Settings: every --some-flag is also the key `some_flag` of the TOML file named by \
         --config (or {prefix}CONFIG) and the environment variable {prefix}SOME_FLAG; flags \
         override the environment, which overrides the file.",
        prefix = env_prefix
    );
    command
        .arg(
            Arg::new(CONFIG_FLAG)
                .long(CONFIG_FLAG)
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .help("TOML file of settings (keys are the flags' long names with `_`)"),
        )
        .after_help(note)
}

/// Every long flag but help, version and config, by its snake_case key.
fn settable_flags(command: &Command) -> BTreeMap<String, Settable> {
    command
        .get_arguments()
        .filter(|arg| {
            !matches!(
                arg.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
        })
        .filter(|arg| arg.get_id().as_str() != CONFIG_FLAG)
        .filter_map(|arg| {
            let long = arg.get_long()?;
            Some((
                long.replace('-', "_"),
                Settable {
                    id: arg.get_id().to_string(),
                    many: matches!(arg.get_action(), ArgAction::Append),
                },
            ))
        })
        .collect()
}

/// `--config PATH` or `--config=PATH` from the command line, before any `--`.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let flag = format!("--{CONFIG_FLAG}");
    let with_equals = format!("{flag}=");
    let mut words = argv.iter().skip(1);
    while let Some(word) = words.next() {
        let text = word.to_string_lossy();
        if text == "--" {
            return None;
        }
        if text == flag {
            return words.next().map(PathBuf::from);
        }
        if let Some(rest) = text.strip_prefix(&with_equals) {
            return Some(PathBuf::from(rest));
        }
    }
    None
}

/// The file's settings by argument id, each checked by its flag's parser.
fn file_values(
    path: &Path,
    settable: &BTreeMap<String, Settable>,
    command: &Command,
) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|err: toml::de::Error| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: err.to_string().trim().replace('\n', " "),
        })?;
    let mut values = Vec::with_capacity(table.len());
    for (key, value) in &table {
        let normalized = key.replace('-', "_");
        let Some(flag) = settable.get(&normalized) else {
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key: key.clone(),
                hint: suggestion(&normalized, settable.keys()),
            });
        };
        let strings =
            toml_value::to_strings(value, flag.many).map_err(|found| ConfigError::WrongType {
                path: path.to_path_buf(),
                key: key.clone(),
                found,
                expected: if flag.many {
                    "a list of strings or numbers"
                } else {
                    "a string, number or boolean"
                },
            })?;
        check_values(
            command,
            &flag.id,
            &strings,
            &path.display().to_string(),
            key,
        )?;
        values.push((flag.id.clone(), strings));
    }
    Ok(values)
}

/// Runs each value through the flag's own value parser (a one-flag command parses it, since
/// clap keeps a parser's `parse_ref` to itself); switches take `true` or `false`.
fn check_values(
    command: &Command,
    id: &str,
    values: &[String],
    origin: &str,
    key: &str,
) -> Result<(), ConfigError> {
    let Some(arg) = command
        .get_arguments()
        .find(|arg| arg.get_id().as_str() == id)
    else {
        return Ok(());
    };
    let refused = |value: &String, reason: String| ConfigError::InvalidValue {
        origin: origin.to_string(),
        key: key.to_string(),
        value: value.clone(),
        reason,
    };
    let is_switch = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
    let Some(long) = arg.get_long() else {
        return Ok(());
    };
    for value in values {
        if is_switch {
            if value != "true" && value != "false" {
                return Err(refused(
                    value,
                    "it is a switch: use true or false".to_string(),
                ));
            }
            continue;
        }
        let probe = Command::new("probe")
            .no_binary_name(true)
            .arg(arg.clone().required(false));
        if let Err(err) = probe.try_get_matches_from([format!("--{long}={value}")]) {
            return Err(refused(value, reason(&err)));
        }
    }
    Ok(())
}

/// clap's message for a refused value without its `error:` prefix and usage lines.
fn reason(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").trim().to_string()
}

/// ` (did you mean `x`?)` for the closest known key, if one is close.
fn suggestion<'a>(key: &str, known: impl Iterator<Item = &'a String>) -> String {
    known
        .map(|candidate| (strsim::jaro_winkler(key, candidate), candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| format!(" (did you mean `{candidate}`?)"))
        .unwrap_or_default()
}

/// `FLEETMAPD_` + `node_id` → `FLEETMAPD_NODE_ID`.
fn var_name(prefix: &str, key: &str) -> String {
    format!("{prefix}{}", key.replace('-', "_").to_uppercase())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use super::*;

    #[derive(Debug, Parser)]
    #[command(name = "svc")]
    struct Args {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long)]
        node_id: String,
        #[arg(long, default_value_t = 1000)]
        heartbeat_ms: u64,
        #[arg(long)]
        verbose: bool,
        #[arg(long)]
        label: Vec<String>,
        #[arg(long)]
        token_file: Option<PathBuf>,
    }

    fn parse_with(
        argv: &[&str],
        vars: &[(&str, &str)],
        file: Option<&str>,
    ) -> Result<Args, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut words: Vec<String> = vec!["svc".into()];
        if let Some(text) = file {
            let path = dir.path().join("svc.toml");
            std::fs::write(&path, text).expect("write");
            words.push("--config".into());
            words.push(path.display().to_string());
        }
        words.extend(argv.iter().map(|w| w.to_string()));
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        try_parse_from(words, &|name: &str| vars.get(name).cloned(), "SVC_")
    }

    #[test]
    fn the_file_sets_what_flags_leave_out_including_required_ones() {
        let file = "node_id = \"n1\"\nheartbeat_ms = 250\nverbose = true\nlabel = [\"a\", \"b\"]\n";
        let args = parse_with(&[], &[], Some(file)).expect("parses");
        assert_eq!(args.node_id, "n1");
        assert_eq!(args.heartbeat_ms, 250);
        assert!(args.verbose);
        assert_eq!(args.label, vec!["a", "b"]);
        assert_eq!(
            args.listen,
            "127.0.0.1:0".parse::<SocketAddr>().expect("addr")
        );
    }

    #[test]
    fn environment_overrides_the_file_and_flags_override_both() {
        let file = "node_id = \"from-file\"\nheartbeat_ms = 250\n";
        let args = parse_with(&[], &[("SVC_NODE_ID", "from-env")], Some(file)).expect("parses");
        assert_eq!(args.node_id, "from-env");
        assert_eq!(args.heartbeat_ms, 250);
        let args = parse_with(
            &["--node-id", "from-flag"],
            &[("SVC_NODE_ID", "from-env")],
            Some(file),
        )
        .expect("parses");
        assert_eq!(args.node_id, "from-flag");
    }

    #[test]
    fn hyphenated_keys_and_the_config_variable_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("svc.toml");
        std::fs::write(&path, "node-id = \"n2\"\n").expect("write");
        let config = path.display().to_string();
        let args: Args = try_parse_from(
            ["svc"],
            &|name: &str| (name == "SVC_CONFIG").then(|| config.clone()),
            "SVC_",
        )
        .expect("parses");
        assert_eq!(args.node_id, "n2");
        let args: Args = try_parse_from(
            ["svc".to_string(), format!("--config={config}")],
            &|_: &str| None,
            "SVC_",
        )
        .expect("parses");
        assert_eq!(args.node_id, "n2");
    }

    #[test]
    fn an_unknown_key_is_named_with_the_closest_known_one() {
        let err = parse_with(&[], &[], Some("node_id = \"n\"\nheartbeat_msec = 5\n"))
            .expect_err("refused");
        let text = err.to_string();
        assert!(matches!(err, ConfigError::UnknownKey { .. }), "{text}");
        assert!(
            text.contains("`heartbeat_msec`") && text.contains("did you mean `heartbeat_ms`"),
            "{text}"
        );
    }

    #[test]
    fn a_bad_value_names_its_file_and_key() {
        let err = parse_with(
            &[],
            &[],
            Some("node_id = \"n\"\nlisten = \"localhost:port\"\n"),
        )
        .expect_err("refused");
        let text = err.to_string();
        assert!(matches!(err, ConfigError::InvalidValue { .. }), "{text}");
        assert!(
            text.contains("`listen`")
                && text.contains("svc.toml")
                && text.contains("localhost:port"),
            "{text}"
        );
    }

    #[test]
    fn a_bad_environment_value_names_its_variable() {
        let err = parse_with(&["--node-id", "n"], &[("SVC_HEARTBEAT_MS", "soon")], None)
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("SVC_HEARTBEAT_MS") && text.contains("the environment"),
            "{text}"
        );
    }

    #[test]
    fn wrong_types_and_broken_toml_are_refused_by_name() {
        let err = parse_with(&[], &[], Some("node_id = [\"a\"]\n")).expect_err("refused");
        assert!(err.to_string().contains("gives `node_id` a list"), "{err}");
        let err = parse_with(&[], &[], Some("node_id = \n")).expect_err("refused");
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
        let err = parse_with(&[], &[], Some("[section]\nnode_id = \"n\"\n")).expect_err("refused");
        assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err}");
    }

    #[test]
    fn a_missing_file_is_refused_with_its_path() {
        let err: ConfigError = try_parse_from(
            ["svc", "--config", "/nonexistent/svc.toml"],
            &|_: &str| None,
            "SVC_",
        )
        .map(|_: Args| ())
        .expect_err("refused");
        assert!(err.to_string().contains("/nonexistent/svc.toml"), "{err}");
    }

    #[test]
    fn a_required_flag_missing_everywhere_is_still_a_usage_error() {
        let err = parse_with(&[], &[], None).expect_err("refused");
        assert!(matches!(err, ConfigError::Cli(_)), "{err}");
        assert!(err.to_string().contains("--node-id"), "{err}");
    }

    #[test]
    fn a_switch_takes_only_true_or_false() {
        let args = parse_with(&["--node-id", "n"], &[], Some("verbose = false\n")).expect("parses");
        assert!(!args.verbose);
        let err =
            parse_with(&["--node-id", "n"], &[("SVC_VERBOSE", "yes")], None).expect_err("refused");
        assert!(err.to_string().contains("true or false"), "{err}");
    }

    #[test]
    fn repeated_flags_from_the_environment_split_on_commas() {
        let args = parse_with(&["--node-id", "n"], &[("SVC_LABEL", "x,y")], None).expect("parses");
        assert_eq!(args.label, vec!["x", "y"]);
    }
}
