//! Environment overrides: `CHURNSIGNAL__<SECTION>__<KEY>=<value>`, typed by the key's
//! schema (the shipped default file).

use super::{ConfigError, ENV_PREFIX};

/// The shipped default file (every option with its default): the schema environment
/// overrides are typed by.
const DEFAULT_FILE: &str = include_str!("../../config/default.toml");

/// Sections whose keys are librdkafka properties.
const PROPERTY_TABLES: [&str; 3] = ["properties", "consumer_properties", "producer_properties"];

/// An override's value, typed by the key's schema: a key whose default is a string,
/// or a librdkafka property, takes the text as it is (`0x1F` stays `0x1F`); others are
/// read as TOML values (`2.5`, `true`, `["a"]`), a bare word as a string. A property
/// name without dots has its underscores read as dots (`SASL_PASSWORD` is
/// `sasl.password`), since most environments cannot name a variable with a dot.
fn typed_override(
    mut path: Vec<String>,
    raw: &str,
    defaults: &toml::Table,
) -> (Vec<String>, toml::Value) {
    let is_property =
        path.len() == 3 && path[0] == "kafka" && PROPERTY_TABLES.contains(&path[1].as_str());
    if is_property {
        if !path[2].contains('.') {
            path[2] = path[2].replace('_', ".");
        }
        return (path, toml::Value::String(raw.to_owned()));
    }
    let mut at: Option<&toml::Value> = None;
    let mut table = Some(defaults);
    for seg in &path {
        at = table.and_then(|t| t.get(seg));
        table = at.and_then(toml::Value::as_table);
    }
    if let Some(toml::Value::String(_)) = at {
        return (path, toml::Value::String(raw.to_owned()));
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    (path, value)
}

/// Applies `CHURNSIGNAL__A__B=v` overrides onto the parsed table.
pub(super) fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    let defaults: toml::Table = toml::from_str(DEFAULT_FILE).unwrap_or_default();
    for (name, raw) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(|p| p.to_ascii_lowercase())
            .collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Parse {
                origin: Some(name.clone()),
                message: "empty key segment in environment override".into(),
            });
        }
        let (path, value) = typed_override(path, &raw, &defaults);
        let mut cur = &mut *table;
        for seg in &path[..path.len() - 1] {
            let entry = cur
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Parse {
                        origin: Some(name.clone()),
                        message: format!("`{seg}` is not a section"),
                    })
                }
            };
        }
        cur.insert(path[path.len() - 1].clone(), value);
    }
    Ok(())
}
