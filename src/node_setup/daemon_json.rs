//! Docker's `/etc/docker/daemon.json`, merged and unmerged by node setup: the registries that
//! speak plain HTTP go into its `insecure-registries` list, and every other key of the user's
//! stays as it was (values and order).
//!
//! Removal gives the file back byte for byte, so the bytes before the first merge are kept in a
//! state file beside it (`daemon.json.registry-dns`, node setup's own), with the bytes node
//! setup wrote. A daemon.json that differs from those written bytes was edited by someone else
//! after the merge: it is then never written again, neither by install nor by removal; each
//! says what is left to do by hand. A file that is not a JSON object is left alone too.
//!
//! [`plan_install`] and [`plan_remove`] decide from the files' contents alone; [`apply`] does the
//! writing, each file replaced atomically (a temporary file renamed over it, the mode kept).

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The key dockerd reads the plain-HTTP (and unverified-TLS) registries from.
pub const INSECURE_REGISTRIES: &str = "insecure-registries";
/// The first key of the state file, saying whose it is.
const WRITTEN_BY: &str = "Written by registry-dns node setup (deploy/node); ACTION=remove deletes it.";

/// What node setup keeps beside daemon.json while its registries are merged in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    written_by: String,
    /// daemon.json's bytes before the merge; `None`: there was no daemon.json.
    pub original: Option<String>,
    /// The bytes node setup last wrote to daemon.json.
    pub written: String,
    /// The entries node setup added to `insecure-registries` (the others were the user's).
    pub added: Vec<String>,
}

/// What to do with the two files, and the line that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to write; the line says why.
    Keep(String),
    /// New contents for daemon.json and the state file (`None`: delete it).
    Write { daemon_json: Option<String>, state: Option<State>, message: String },
}

/// The state file that belongs to `daemon_json`.
pub fn state_path(daemon_json: &Path) -> PathBuf {
    let mut name = daemon_json.file_name().unwrap_or_default().to_os_string();
    name.push(".registry-dns");
    daemon_json.with_file_name(name)
}

/// Merging `registries` into `current` (daemon.json's text, `None` when absent), given node
/// setup's `state` from an earlier pass.
pub fn plan_install(file: &Path, current: Option<&str>, state: Option<State>, registries: &[String]) -> Plan {
    let file = file.display();
    let Some(state) = state else {
        if registries.is_empty() {
            return Plan::Keep(format!("{file}: no plain-HTTP registry to merge"));
        }
        let object = match current.map(parse).transpose() {
            Ok(object) => object.unwrap_or_default(),
            Err(e) => {
                return Plan::Keep(format!(
                    "{file} {e}: left as is; add {registries:?} to its {INSECURE_REGISTRIES} by hand"
                ));
            }
        };
        let listed = match insecure_list(&object) {
            Ok(listed) => listed,
            Err(e) => return Plan::Keep(format!("{file}: {e}: left as is; add {registries:?} to it by hand")),
        };
        let added: Vec<String> = registries.iter().filter(|r| !listed.contains(r)).cloned().collect();
        if added.is_empty() {
            return Plan::Keep(format!(
                "{file} already lists {registries:?} in {INSECURE_REGISTRIES} (not node setup's entries)"
            ));
        }
        let written = merged(object, &added);
        let message = match current {
            Some(_) => format!("wrote {file}: added {added:?} to {INSECURE_REGISTRIES}, every other key kept"),
            None => format!("wrote {file} (there was none): {INSECURE_REGISTRIES} {added:?}"),
        };
        let state = State {
            written_by: WRITTEN_BY.into(),
            original: current.map(String::from),
            written: written.clone(),
            added,
        };
        return Plan::Write { daemon_json: Some(written), state: Some(state), message };
    };
    if current != Some(state.written.as_str()) {
        return edited_since(&file.to_string(), current, registries);
    }
    // Ours as written: recompute from the original, so that a changed list of registries is
    // merged into the user's bytes, not into the previous merge.
    let original = match state.original.as_deref().map(parse).transpose() {
        Ok(object) => object.unwrap_or_default(),
        Err(e) => return Plan::Keep(format!("{file}: the original kept in its state file {e}: left as is")),
    };
    let listed = insecure_list(&original).unwrap_or_default();
    let added: Vec<String> = registries.iter().filter(|r| !listed.contains(r)).cloned().collect();
    if added == state.added {
        return Plan::Keep(format!("{file} up to date"));
    }
    if added.is_empty() {
        return restore(&file.to_string(), state);
    }
    let written = merged(original, &added);
    let message = format!("wrote {file}: {INSECURE_REGISTRIES} now adds {added:?} to the original's");
    Plan::Write { daemon_json: Some(written.clone()), state: Some(State { written, added, ..state }), message }
}

/// Undoing the merge: the original bytes back, or nothing when someone edited the file since.
pub fn plan_remove(file: &Path, current: Option<&str>, state: Option<State>, registries: &[String]) -> Plan {
    let file = file.display().to_string();
    let Some(state) = state else {
        let listed = current.and_then(|text| parse(text).ok()).and_then(|o| insecure_list(&o).ok()).unwrap_or_default();
        let theirs: Vec<&String> = registries.iter().filter(|r| listed.contains(r)).collect();
        return match theirs.is_empty() {
            true => Plan::Keep(format!("{file}: nothing of node setup's")),
            false => Plan::Keep(format!("{file} lists {theirs:?}, but node setup did not add them: left as is")),
        };
    };
    if current != Some(state.written.as_str()) {
        let message = format!(
            "{file} changed since node setup merged it: left as is (a later edit is never overwritten); remove {:?} \
             from its {INSECURE_REGISTRIES} by hand, then send dockerd SIGHUP",
            state.added
        );
        return Plan::Write { daemon_json: current.map(String::from), state: None, message };
    }
    restore(&file, state)
}

fn restore(file: &str, state: State) -> Plan {
    match state.original {
        Some(original) => Plan::Write {
            daemon_json: Some(original),
            state: None,
            message: format!("restored {file} as it was before node setup, byte for byte"),
        },
        None => {
            Plan::Write { daemon_json: None, state: None, message: format!("removed {file} (node setup created it)") }
        }
    }
}

/// Install found daemon.json other than node setup wrote it.
fn edited_since(file: &str, current: Option<&str>, registries: &[String]) -> Plan {
    let listed = current.and_then(|text| parse(text).ok()).and_then(|o| insecure_list(&o).ok()).unwrap_or_default();
    let missing: Vec<&String> = registries.iter().filter(|r| !listed.contains(r)).collect();
    match missing.is_empty() {
        true => {
            Plan::Keep(format!("{file} changed since node setup merged it; it still lists {registries:?}: left as is"))
        }
        false => Plan::Keep(format!(
            "{file} changed since node setup merged it and lacks {missing:?}: left as is (a later edit is never \
             overwritten); add them to its {INSECURE_REGISTRIES}, then send dockerd SIGHUP"
        )),
    }
}

/// daemon.json's text as a JSON object, or what is wrong with it.
fn parse(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err("is not a JSON object".into()),
        Err(e) => Err(format!("is not valid JSON ({e})")),
    }
}

/// The `insecure-registries` entries (none when the key is absent).
fn insecure_list(object: &Map<String, Value>) -> Result<Vec<String>, String> {
    match object.get(INSECURE_REGISTRIES) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(String::from).ok_or(format!("{INSECURE_REGISTRIES} holds a non-string {v}")))
            .collect(),
        Some(other) => Err(format!("{INSECURE_REGISTRIES} is not a list but {other}")),
    }
}

/// `object` with `added` appended to its `insecure-registries` (the key made, last, if absent).
fn merged(mut object: Map<String, Value>, added: &[String]) -> String {
    let entry = object.entry(INSECURE_REGISTRIES).or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(items) = entry {
        items.extend(added.iter().cloned().map(Value::String));
    }
    let mut text = serde_json::to_string_pretty(&Value::Object(object)).expect("a JSON value serializes");
    text.push('\n');
    text
}

/// Reads the two files, plans with `plan`, writes what changed; the line that says what happened.
pub fn apply(file: &Path, plan: impl FnOnce(Option<&str>, Option<State>) -> Plan) -> Result<(String, bool), String> {
    if std::fs::symlink_metadata(file).is_ok_and(|m| m.file_type().is_symlink()) {
        return Ok((
            format!("{} is a symbolic link: left as is (node setup writes only plain files)", file.display()),
            false,
        ));
    }
    let current = read(file)?;
    let state_file = state_path(file);
    let state = match read(&state_file)? {
        Some(text) => Some(serde_json::from_str::<State>(&text).map_err(|e| format!("{}: {e}", state_file.display()))?),
        None => None,
    };
    match plan(current.as_deref(), state.clone()) {
        Plan::Keep(message) => Ok((message, false)),
        Plan::Write { daemon_json, state: new_state, message } => {
            // The state first: the original is safe before daemon.json changes, and dropped
            // only after it is back.
            if let Some(new_state) = &new_state {
                let text = serde_json::to_string_pretty(new_state).expect("the state serializes") + "\n";
                write(&state_file, &text, None)?;
            }
            let changed = daemon_json.as_deref() != current.as_deref();
            if changed {
                match &daemon_json {
                    Some(text) => write(file, text, Some(file))?,
                    None => remove(file)?,
                }
            }
            if new_state.is_none() && state.is_some() {
                remove(&state_file)?;
            }
            Ok((message, changed))
        }
    }
}

fn read(file: &Path) -> Result<Option<String>, String> {
    match std::fs::read(file) {
        Ok(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| format!("{} is not UTF-8 text", file.display())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    }
}

/// Replaces `file` with `text` atomically, with the mode of `like` (if it exists), else 0644.
fn write(file: &Path, text: &str, like: Option<&Path>) -> Result<(), String> {
    let mode = like.and_then(|f| std::fs::metadata(f).ok()).map_or(0o644, |m| m.permissions().mode() & 0o7777);
    let mut tmp = file.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = std::fs::write(&tmp, text)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)))
        .and_then(|()| std::fs::rename(&tmp, file));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", file.display())
    })
}

fn remove(file: &Path) -> Result<(), String> {
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(format!("cannot remove {}: {e}", file.display())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/docker/daemon.json";
    const USERS: &str = "{\n    \"log-level\": \"warn\",\n    \"features\": {\"buildkit\": true},\n    \"insecure-registries\": [\"10.0.0.0/8\"],\n    \"max-concurrent-downloads\": 4\n}";

    fn regs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn install(current: Option<&str>, state: Option<State>, list: &[&str]) -> Plan {
        plan_install(Path::new(FILE), current, state, &regs(list))
    }

    fn written(plan: &Plan) -> (Option<String>, State) {
        match plan {
            Plan::Write { daemon_json, state: Some(state), .. } => (daemon_json.clone(), state.clone()),
            other => panic!("expected a write with state: {other:?}"),
        }
    }

    #[test]
    fn merge_keeps_every_key_and_its_order_and_appends_to_the_list() {
        let plan = install(Some(USERS), None, &["knative-local-registry:5000"]);
        let (text, state) = written(&plan);
        let text = text.unwrap();
        let keys: Vec<&str> = ["log-level", "features", "insecure-registries", "max-concurrent-downloads"].into();
        let positions: Vec<usize> = keys.iter().map(|k| text.find(&format!("\"{k}\"")).unwrap()).collect();
        assert!(positions.is_sorted(), "key order kept: {text}");
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["insecure-registries"], serde_json::json!(["10.0.0.0/8", "knative-local-registry:5000"]));
        assert_eq!(value["features"]["buildkit"], true);
        assert_eq!(value["max-concurrent-downloads"], 4);
        assert_eq!(state.original.as_deref(), Some(USERS));
        assert_eq!(state.added, ["knative-local-registry:5000"]);
        assert_eq!(state.written, text);
    }

    #[test]
    fn twice_is_a_no_op_and_removal_restores_the_bytes() {
        let (text, state) = written(&install(Some(USERS), None, &["knative-local-registry:5000"]));
        let again = install(text.as_deref(), Some(state.clone()), &["knative-local-registry:5000"]);
        assert_eq!(again, Plan::Keep(format!("{FILE} up to date")));
        let removed =
            plan_remove(Path::new(FILE), text.as_deref(), Some(state), &regs(&["knative-local-registry:5000"]));
        assert!(matches!(&removed, Plan::Write { daemon_json: Some(t), state: None, .. } if t == USERS), "{removed:?}");
    }

    #[test]
    fn no_daemon_json_is_created_and_removal_deletes_it() {
        let (text, state) = written(&install(None, None, &["a:5000", "b:5001"]));
        assert_eq!(text.as_deref(), Some("{\n  \"insecure-registries\": [\n    \"a:5000\",\n    \"b:5001\"\n  ]\n}\n"));
        let removed = plan_remove(Path::new(FILE), text.as_deref(), Some(state), &regs(&["a:5000"]));
        assert!(matches!(removed, Plan::Write { daemon_json: None, state: None, .. }));
    }

    #[test]
    fn a_changed_list_is_merged_into_the_original_not_into_the_last_merge() {
        let (text, state) = written(&install(Some(USERS), None, &["a:5000"]));
        let (text, state) = written(&install(text.as_deref(), Some(state), &["b:5001"]));
        let value: Value = serde_json::from_str(text.as_deref().unwrap()).unwrap();
        assert_eq!(value["insecure-registries"], serde_json::json!(["10.0.0.0/8", "b:5001"]));
        assert_eq!(state.original.as_deref(), Some(USERS));
        // Back to plain TLS everywhere: nothing to add, so the original comes back.
        let back = install(text.as_deref(), Some(state), &[]);
        assert!(matches!(&back, Plan::Write { daemon_json: Some(t), state: None, .. } if t == USERS), "{back:?}");
    }

    #[test]
    fn entries_the_user_already_has_are_theirs() {
        let users = "{\"insecure-registries\": [\"knative-local-registry:5000\"]}";
        let plan = install(Some(users), None, &["knative-local-registry:5000"]);
        assert!(matches!(&plan, Plan::Keep(m) if m.contains("not node setup's entries")), "{plan:?}");
        let removal = plan_remove(Path::new(FILE), Some(users), None, &regs(&["knative-local-registry:5000"]));
        assert!(matches!(&removal, Plan::Keep(m) if m.contains("did not add them: left as is")), "{removal:?}");
    }

    #[test]
    fn a_file_edited_after_the_merge_is_never_written_again() {
        let (text, state) = written(&install(Some(USERS), None, &["knative-local-registry:5000"]));
        let edited = text.unwrap().replace("\"warn\"", "\"debug\"");
        let plan = install(Some(&edited), Some(state.clone()), &["knative-local-registry:5000"]);
        assert!(matches!(&plan, Plan::Keep(m) if m.contains("still lists")), "{plan:?}");
        let plan = install(Some(&edited), Some(state.clone()), &["other:5000"]);
        assert!(matches!(&plan, Plan::Keep(m) if m.contains("lacks [\"other:5000\"]: left as is")), "{plan:?}");
        let removal = plan_remove(Path::new(FILE), Some(&edited), Some(state), &regs(&["knative-local-registry:5000"]));
        match removal {
            Plan::Write { daemon_json, state: None, message } => {
                assert_eq!(daemon_json.as_deref(), Some(edited.as_str()), "left as the user edited it");
                assert!(message.contains("remove [\"knative-local-registry:5000\"]"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_is_not_a_json_object_is_left_alone() {
        for text in ["{\"a\": ", "[1, 2]", "{\"insecure-registries\": \"x\"}", "{\"insecure-registries\": [1]}"] {
            let plan = install(Some(text), None, &["knative-local-registry:5000"]);
            assert!(matches!(&plan, Plan::Keep(m) if m.contains("left as is")), "{text}: {plan:?}");
        }
    }
}
