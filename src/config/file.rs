//! `--config FILE`: the flags' settings in a YAML or TOML file, so a ConfigMap can carry them and
//! SIGHUP can re-read them.
//!
//! Keys are the flag names without the dashes (`upstream-timeout`, or `upstream_timeout`); a value
//! is a scalar or, for a repeatable flag, a list. The file is turned into the arguments the flags
//! would have been and parsed by the same clap definitions, so a setting means exactly what its
//! flag means and fails with the same message. The format follows the extension: `.toml` is TOML,
//! anything else YAML (JSON is YAML too).
//!
//! ```yaml
//! record: [knative-local-registry=10.0.0.10]
//! upstream: [10.96.0.10, 10.96.0.11]
//! upstream-timeout: 500ms
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

/// One setting's value.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Value {
    List(Vec<Scalar>),
    One(Scalar),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Scalar {
    fn to_arg(&self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(t) => t.clone(),
        }
    }
}

/// Reads `path` into command-line arguments (`--key value`, once per list item).
pub fn read_args(path: &Path) -> anyhow::Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    args_of_text(&text, path.extension().and_then(|e| e.to_str()) == Some("toml"))
}

/// The arguments of the settings a `registry-dns` given nothing at all runs with (`default.yaml`,
/// built into the binary): a first run needs no flag to answer the registry's name.
pub fn embedded_default_args() -> Vec<OsString> {
    args_of_text(include_str!("default.yaml"), false).expect("the embedded default.yaml parses")
}

fn args_of_text(text: &str, toml: bool) -> anyhow::Result<Vec<OsString>> {
    let settings: BTreeMap<String, Value> = match toml {
        true => toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.message()))?,
        false if text.trim().is_empty() => BTreeMap::new(),
        false => serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{}", first_line(&e.to_string())))?,
    };
    let mut args = Vec::new();
    for (key, value) in settings {
        let flag = key.replace('_', "-");
        if flag == "config" {
            bail!("'config' cannot be set in a config file");
        }
        let values = match value {
            Value::One(one) => vec![one],
            Value::List(list) => list,
        };
        for value in values {
            args.push(OsString::from(format!("--{flag}")));
            args.push(OsString::from(value.to_arg()));
        }
    }
    Ok(args)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of(name: &str, text: &str) -> anyhow::Result<Vec<String>> {
        let dir = std::env::temp_dir().join(format!("registry-dns-config-{}-{name}", std::process::id()));
        std::fs::write(&dir, text).unwrap();
        let args = read_args(&dir);
        let _ = std::fs::remove_file(&dir);
        Ok(args?.into_iter().map(|a| a.into_string().unwrap()).collect())
    }

    #[test]
    fn yaml_and_toml_give_the_same_arguments() {
        let yaml = "record: [a=10.0.0.1, b=10.0.0.2]\nupstream_timeout: 500ms\nttl: 30\n";
        let toml = "record = [\"a=10.0.0.1\", \"b=10.0.0.2\"]\nupstream-timeout = \"500ms\"\nttl = 30\n";
        let expected =
            ["--record", "a=10.0.0.1", "--record", "b=10.0.0.2", "--ttl", "30", "--upstream-timeout", "500ms"];
        assert_eq!(args_of("c.yaml", yaml).unwrap(), expected);
        assert_eq!(args_of("c.toml", toml).unwrap(), expected);
        assert!(args_of("e.yaml", "").unwrap().is_empty());
    }

    #[test]
    fn the_embedded_default_answers_the_registrys_name_on_this_machine() {
        let args: Vec<String> = embedded_default_args().into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(args, ["--record", "knative-local-registry=127.0.0.1"]);
    }

    #[test]
    fn broken_files_and_nested_config_are_errors() {
        assert!(args_of("d.yaml", "record: [a=10.0.0.1\n").is_err());
        assert!(args_of("d.toml", "record = ").is_err());
        assert!(args_of("n.yaml", "config: other.yaml\n").unwrap_err().to_string().contains("config"));
        assert!(args_of("m.yaml", "record: {a: b}\n").is_err(), "a map is no flag value");
    }
}
