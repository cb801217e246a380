//! The task lifecycle of ckp-spec §3.2 as a pure state machine, and the task messages of §3.1.
//!
//! Owns: which transitions are legal (`pending → in_progress → completed | failed`,
//! `failed → pending` only on an explicit `task.retry`), the refusal naming task, state and
//! action (a 409), and reading `task_id` / `delta` / `output` from flat or `{action, data}`
//! bodies ([`transition`], [`read_message`]); task state in JetStream, changed only by
//! revision-checked writes ([`TaskStore`]); and the lifecycle served on a kernel's input topic,
//! which seals acknowledged completions into the DATA loop ([`Lifecycle`]). What a seal writes
//! on disk belongs to `ck-loops`.

pub mod anchor;
mod lifecycle;
pub mod provision;
pub mod restore;
mod store;

pub use lifecycle::{Lifecycle, Recovery, SealedTask, StartError, instance_id};

pub use store::{
    MAX_BUCKET_BYTES, MAX_TASK_RECORD, StoreError, TaskRecord, TaskStore, TransitionEntry,
    Transitioned, bucket_for,
};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Created, not started.
    Pending,
    /// Started (v3.7 task-engine calls this `executing`).
    InProgress,
    /// Sealed: terminal.
    Completed,
    /// Failed: only an explicit retry leaves it.
    Failed,
}

impl TaskState {
    /// Reads a state name, accepting the `executing` alias.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "pending" => Self::Pending,
            "in_progress" | "executing" => Self::InProgress,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    /// No transition leaves it.
    pub fn is_terminal(self) -> bool {
        self == Self::Completed
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lifecycle action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskAction {
    /// `task.start`.
    Start,
    /// `task.update`.
    Update,
    /// `task.complete` (seals `data.json`).
    Complete,
    /// `task.fail`.
    Fail,
    /// `task.retry` (explicit only, never automatic).
    Retry,
}

impl TaskAction {
    /// The action for a message's `action` field, if it is a lifecycle action.
    pub fn parse(action: &str) -> Option<Self> {
        Some(match action {
            "task.start" => Self::Start,
            "task.update" => Self::Update,
            "task.complete" => Self::Complete,
            "task.fail" => Self::Fail,
            "task.retry" => Self::Retry,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "task.start",
            Self::Update => "task.update",
            Self::Complete => "task.complete",
            Self::Fail => "task.fail",
            Self::Retry => "task.retry",
        }
    }

    /// Every action.
    pub const ALL: [TaskAction; 5] = [
        Self::Start,
        Self::Update,
        Self::Complete,
        Self::Fail,
        Self::Retry,
    ];
}

impl std::fmt::Display for TaskAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused transition: answered 409, changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("task {task_id} is {state}: `{action}` is not allowed{hint}")]
pub struct IllegalTransition {
    /// The task.
    pub task_id: String,
    /// Its current state (`None`: the task does not exist yet).
    pub state: StateName,
    /// The refused action.
    pub action: TaskAction,
    /// Why, in a few words.
    pub hint: String,
}

/// A state for messages, including "does not exist".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateName(pub Option<TaskState>);

impl std::fmt::Display for StateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(s) => write!(f, "{s}"),
            None => f.write_str("unknown (never started)"),
        }
    }
}

impl IllegalTransition {
    /// The HTTP-style code results carry.
    pub const CODE: u16 = 409;
}

/// The state after `action` on a task in `state` (`None`: no such task yet), or why not.
///
/// `task.start` creates the task (`pending` is passed through: a start both creates and starts
/// it); a second `task.start` is refused, as is anything after `completed`.
pub fn transition(
    task_id: &str,
    state: Option<TaskState>,
    action: TaskAction,
) -> Result<TaskState, IllegalTransition> {
    use TaskAction::*;
    use TaskState::*;
    let refuse = |hint: &str| IllegalTransition {
        task_id: task_id.to_owned(),
        state: StateName(state),
        action,
        hint: if hint.is_empty() {
            String::new()
        } else {
            format!(" ({hint})")
        },
    };
    match (state, action) {
        (None | Some(Pending), Start) => Ok(InProgress),
        (Some(InProgress), Start) => Err(refuse("it was already started")),
        (Some(InProgress), Update) => Ok(InProgress),
        (Some(InProgress), Complete) => Ok(Completed),
        (Some(InProgress), Fail) => Ok(Failed),
        (Some(Failed), Retry) => Ok(Pending),
        (Some(Completed), _) => Err(refuse("completed tasks are sealed; no further transitions")),
        (None | Some(Pending), Update | Complete | Fail) => Err(refuse("start it first")),
        (Some(Failed), _) => Err(refuse("only an explicit task.retry leaves failed")),
        (_, Retry) => Err(refuse("only a failed task can be retried")),
    }
}

/// A lifecycle message, read from a flat body or from `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// The action.
    pub action: TaskAction,
    /// The task.
    pub task_id: String,
    /// `task.update`'s delta.
    pub delta: Option<Value>,
    /// `task.complete`'s output (what `data.json` will hold).
    pub output: Option<Value>,
    /// `task.fail`'s error.
    pub error: Option<Value>,
}

/// Why a lifecycle message is unusable (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MessageError {
    /// No `task_id`, or not a non-empty string.
    #[error("`{0}` needs a non-empty string `task_id` (top level or in `data`)")]
    MissingTaskId(TaskAction),
    /// `task_id` would escape the instance directory or is unreasonable.
    #[error(
        "task_id '{0}' must be 1-128 characters of [A-Za-z0-9._-], not start or end with '.', no '..'"
    )]
    BadTaskId(String),
    /// `task.complete` without an output object.
    #[error("`task.complete` needs an `output` object (it becomes the sealed data.json)")]
    MissingOutput,
    /// A `delta`, `error` or `output` over its bound (413).
    #[error("`{field}` is {size} bytes; at most {max} are accepted")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Its size as JSON.
        size: usize,
        /// The bound.
        max: usize,
    },
}

impl MessageError {
    /// The answer's status code: 413 for a field over its bound, else 400.
    pub fn code(&self) -> u16 {
        match self {
            MessageError::TooLarge { .. } => 413,
            _ => 400,
        }
    }
}

/// Largest `delta` of a `task.update` or `error` of a `task.fail` (bytes of JSON): each is kept
/// in the task's record for as long as the task lives.
pub const MAX_DETAIL: usize = 16 * 1024;
/// Largest `output` of a `task.complete` (bytes of JSON): it is the sealed `data.json`.
pub const MAX_OUTPUT: usize = 256 * 1024;

fn field<'a>(data: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    data.get(name)
}

/// Reads a lifecycle message from the request's `data` object (the host already flattened flat
/// bodies into it, ckp-spec §3.1).
pub fn read_message(action: TaskAction, data: &Value) -> Result<TaskMessage, MessageError> {
    let empty = Map::new();
    let data = data.as_object().unwrap_or(&empty);
    let task_id = field(data, "task_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(MessageError::MissingTaskId(action))?;
    // Task ids become KV keys and directory names.
    let valid = task_id.len() <= 128
        && !task_id.starts_with('.')
        && !task_id.ends_with('.')
        && !task_id.contains("..")
        && task_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(MessageError::BadTaskId(task_id.to_owned()));
    }
    let output = field(data, "output").cloned();
    if action == TaskAction::Complete && !output.as_ref().is_some_and(Value::is_object) {
        return Err(MessageError::MissingOutput);
    }
    let bounded = |name: &'static str, value: Option<&Value>, max: usize| {
        let size = value.map_or(0, |v| serde_json::to_vec(v).map_or(0, |b| b.len()));
        if size > max {
            Err(MessageError::TooLarge {
                field: name,
                size,
                max,
            })
        } else {
            Ok(value.cloned())
        }
    };
    Ok(TaskMessage {
        action,
        task_id: task_id.to_owned(),
        delta: bounded("delta", field(data, "delta"), MAX_DETAIL)?,
        output: bounded("output", output.as_ref(), MAX_OUTPUT)?,
        error: bounded("error", field(data, "error"), MAX_DETAIL)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskAction::*;
    use TaskState::*;

    #[test]
    fn the_manifest_knows_the_same_lifecycle_actions() {
        let names: Vec<&str> = TaskAction::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names, ck_manifest::TASK_LIFECYCLE_ACTIONS);
    }

    #[test]
    fn details_and_outputs_are_bounded() {
        let big = serde_json::json!({"task_id": "t", "delta": {"x": "a".repeat(MAX_DETAIL)}});
        let e = read_message(Update, &big).unwrap_err();
        assert_eq!(e.code(), 413);
        assert!(e.to_string().contains("`delta`"), "{e}");
        let out = serde_json::json!({"task_id": "t", "output": {"x": "a".repeat(MAX_OUTPUT)}});
        assert_eq!(read_message(Complete, &out).unwrap_err().code(), 413);
        let fine = serde_json::json!({"task_id": "t", "delta": {"x": 1}});
        assert!(read_message(Update, &fine).is_ok());
    }

    #[test]
    fn the_happy_paths() {
        let s = transition("t", None, Start).unwrap();
        let s = transition("t", Some(s), Update).unwrap();
        assert_eq!(transition("t", Some(s), Complete), Ok(Completed));
        let f = transition("t", Some(InProgress), Fail).unwrap();
        assert_eq!(transition("t", Some(f), Retry), Ok(Pending));
        assert_eq!(transition("t", Some(Pending), Start), Ok(InProgress));
    }

    #[test]
    fn the_refusals_name_task_state_and_action() {
        let e = transition("t-9", Some(Completed), Complete).unwrap_err();
        assert_eq!(
            e.to_string(),
            "task t-9 is completed: `task.complete` is not allowed (completed tasks are sealed; no further transitions)"
        );
        let e = transition("t-1", None, Update).unwrap_err();
        assert!(e.to_string().contains("unknown (never started)"), "{e}");
        assert!(transition("t", Some(InProgress), Start).is_err());
        assert!(transition("t", Some(InProgress), Retry).is_err());
        assert!(transition("t", Some(Failed), Complete).is_err());
    }

    proptest::proptest! {
        /// Whatever happens, nothing leaves `completed`, and completion needs a start first.
        #[test]
        fn completed_is_terminal(actions in proptest::collection::vec(0usize..5, 0..40)) {
            let mut state: Option<TaskState> = None;
            let mut started = false;
            for a in actions {
                let action = TaskAction::ALL[a];
                let before = state;
                match transition("t", state, action) {
                    Ok(next) => {
                        proptest::prop_assert!(before != Some(Completed));
                        if action == Start { started = true; }
                        if next == Completed { proptest::prop_assert!(started); }
                        state = Some(next);
                    }
                    Err(e) => proptest::prop_assert_eq!(e.state, StateName(before)),
                }
            }
        }
    }

    #[test]
    fn messages_read_from_data_and_refuse_bad_ids() {
        let m = read_message(
            Complete,
            &serde_json::json!({"task_id": "t-1", "output": {"x": 1}}),
        )
        .unwrap();
        assert_eq!(m.task_id, "t-1");
        assert_eq!(m.output, Some(serde_json::json!({"x": 1})));
        assert_eq!(
            read_message(Complete, &serde_json::json!({"task_id": "t-1"})),
            Err(MessageError::MissingOutput)
        );
        for bad in ["../etc", ".hidden", "a/b", "", "end.", "a..b"] {
            assert!(
                read_message(Start, &serde_json::json!({"task_id": bad})).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            read_message(Start, &serde_json::json!({})),
            Err(MessageError::MissingTaskId(Start))
        );
    }
}
