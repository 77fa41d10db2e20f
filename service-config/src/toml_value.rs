//! Turns a TOML value into the command-line strings a flag would have been given.

use toml::Value;

/// The strings a TOML value stands for, or the name of its (unusable) type.
pub(crate) fn to_strings(value: &Value, many: bool) -> Result<Vec<String>, &'static str> {
    match value {
        Value::Array(items) if many => items
            .iter()
            .map(|item| scalar(item).ok_or(type_name(item)))
            .collect(),
        Value::Array(_) => Err("list"),
        other => scalar(other).map(|one| vec![one]).ok_or(type_name(other)),
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Integer(number) => Some(number.to_string()),
        Value::Float(number) => Some(number.to_string()),
        Value::Boolean(flag) => Some(flag.to_string()),
        Value::Datetime(_) | Value::Array(_) | Value::Table(_) => None,
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "string",
        Value::Integer(_) => "integer",
        Value::Float(_) => "float",
        Value::Boolean(_) => "boolean",
        Value::Datetime(_) => "date",
        Value::Array(_) => "list",
        Value::Table(_) => "table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_become_one_string() {
        assert_eq!(
            to_strings(&Value::Integer(5), false),
            Ok(vec!["5".to_string()])
        );
        assert_eq!(
            to_strings(&Value::Boolean(true), false),
            Ok(vec!["true".to_string()])
        );
        assert_eq!(
            to_strings(&Value::String("a b".into()), false),
            Ok(vec!["a b".to_string()])
        );
    }

    #[test]
    fn lists_only_where_the_flag_repeats() {
        let list = Value::Array(vec![Value::String("a".into()), Value::Integer(2)]);
        assert_eq!(
            to_strings(&list, true),
            Ok(vec!["a".to_string(), "2".to_string()])
        );
        assert_eq!(to_strings(&list, false), Err("list"));
    }

    #[test]
    fn tables_and_dates_are_refused_by_name() {
        assert_eq!(
            to_strings(&Value::Table(toml::Table::new()), false),
            Err("table")
        );
        let nested = Value::Array(vec![Value::Table(toml::Table::new())]);
        assert_eq!(to_strings(&nested, true), Err("table"));
    }
}
