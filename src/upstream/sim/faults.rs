//! Fault injection: rules that make the simulator misbehave the ways a real gateway does.
//!
//! A [`FaultRule`] says *where* (an endpoint), *when* (a prompt substring, the first N matching
//! requests) and *what* (a [`Fault`]). Rules come from the TOML/JSON config, from
//! `POST /_sim/faults`, or from [`SimHandle::set_faults`](super::SimHandle::set_faults).
//!
//! How rules combine, decided so that a list reads as a script ("first a 429, then a 503"):
//! every fault kind belongs to one *slot* (delay; terminal answer; truncation; range handling;
//! and the three task-level kinds). For each request, in each slot, only the **first** matching
//! rule in list order applies and spends one of its `times`. Rules of different slots compose
//! (a delay, then a 503). A rule whose `times` is spent is removed.
//!
//! Task-level faults ([`Fault::CompletedWithoutContent`], [`Fault::StatusSpelling`],
//! [`Fault::FailTask`]) are matched against the create request and bind to the task it creates;
//! later GETs of that task show them whatever the fault list says by then.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which endpoint a rule watches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultEndpoint {
    /// `POST /api/v1/videos`.
    Create,
    /// `GET /api/v1/videos/{id}`.
    Get,
    /// `GET /api/v1/videos/{id}/content`.
    Content,
    /// `GET /api/v1/videos/{id}/last_frame`.
    LastFrame,
    /// Every endpoint above (each fault still only fires where it makes sense, see [`Fault`]).
    #[default]
    Any,
}

impl FaultEndpoint {
    fn covers(self, endpoint: FaultEndpoint) -> bool {
        self == FaultEndpoint::Any || self == endpoint
    }
}

/// When a rule applies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultWhen {
    /// Only requests whose prompt contains this (for create: the request's prompt; for the other
    /// endpoints: the prompt of the task named in the path). `None` = every request. A request
    /// without a known prompt (unparsable body, unknown task id) never matches a `Some`.
    pub prompt_contains: Option<String>,
    /// Apply to the first N matching requests, then expire. `None` = always.
    pub times: Option<u32>,
}

/// What goes wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer with this HTTP status and an OpenAI-style error body, without doing the work (a
    /// create answered this way creates no task). With `retry_after_s`, a `Retry-After` header
    /// in seconds. Any endpoint.
    Http {
        /// The status code, e.g. 429, 500, 502, 503.
        status: u16,
        /// Value of the `Retry-After` header; none = no header.
        #[serde(default)]
        retry_after_s: Option<u64>,
    },
    /// Hold the answer this long, then answer normally. On create the task is created *before*
    /// the wait, so a client that times out has still started a (paid) generation. Any endpoint.
    Delay {
        /// Milliseconds to wait.
        ms: u64,
    },
    /// Read the whole request, then drop the TCP connection (with `SO_LINGER` 0, so the peer
    /// sees a reset) without sending any byte of a response. On create, a *valid* request's task
    /// IS created first: the "outcome unknown" case a client must not retry blindly. An invalid
    /// create is dropped the same way but creates nothing. Any endpoint.
    Reset,
    /// `Content-Length` announces the full body, but the body stops with an error after this
    /// many bytes of the response (counted from the first byte sent, also for a 206). A value
    /// not below the body's length has no effect. Content and last frame only.
    TruncateContent {
        /// Bytes sent before the connection is aborted.
        after_bytes: u64,
    },
    /// The task reaches `completed`, but `/content` (and `/last_frame`) answer 404: a
    /// moderation refusal after the fact. Task-level: binds at create.
    CompletedWithoutContent,
    /// Spell the task's `processing` and `completed` states like this (e.g. Ark's
    /// `running`/`succeeded`, U4, or something unknown like `rendering`). Task-level.
    StatusSpelling {
        /// Replaces `processing` / `in_progress`.
        processing: String,
        /// Replaces `completed`.
        completed: String,
    },
    /// The task ends `failed` (when it would have completed) with this error. Task-level.
    FailTask {
        /// `error.code` of the status body.
        code: String,
        /// `error.message` of the status body.
        message: String,
    },
    /// `/content` ignores `Range` and answers 200 with the whole body. Content only.
    IgnoreRange,
}

/// The slot a fault occupies: only the first matching rule per slot fires on a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Delay,
    Terminal,
    Truncate,
    IgnoreRange,
    WithoutContent,
    Spelling,
    Fail,
}

impl Fault {
    fn slot(&self) -> Slot {
        match self {
            Fault::Delay { .. } => Slot::Delay,
            Fault::Http { .. } | Fault::Reset => Slot::Terminal,
            Fault::TruncateContent { .. } => Slot::Truncate,
            Fault::IgnoreRange => Slot::IgnoreRange,
            Fault::CompletedWithoutContent => Slot::WithoutContent,
            Fault::StatusSpelling { .. } => Slot::Spelling,
            Fault::FailTask { .. } => Slot::Fail,
        }
    }

    /// Whether this fault can fire on a request to `endpoint` (never `Any`).
    fn fires_on(&self, endpoint: FaultEndpoint) -> bool {
        match self.slot() {
            Slot::Delay | Slot::Terminal => true,
            Slot::Truncate => {
                matches!(endpoint, FaultEndpoint::Content | FaultEndpoint::LastFrame)
            }
            Slot::IgnoreRange => endpoint == FaultEndpoint::Content,
            Slot::WithoutContent | Slot::Spelling | Slot::Fail => endpoint == FaultEndpoint::Create,
        }
    }
}

/// One fault rule: where, when, what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// The endpoint watched; default: any.
    #[serde(default)]
    pub endpoint: FaultEndpoint,
    /// Conditions; default: every request, forever.
    #[serde(default)]
    pub when: FaultWhen,
    /// The misbehaviour.
    pub fault: Fault,
}

/// A rule that can never do what it says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultRuleError {
    /// `Fault::Http` with a number that is not an HTTP status code.
    #[error("fault status {0} is not an HTTP status code (100-999)")]
    InvalidStatus(u16),
    /// The fault cannot fire on the endpoint the rule watches.
    #[error("fault {fault} never fires on endpoint {endpoint:?}; it applies to {applies_to}")]
    WrongEndpoint {
        /// The fault's kind.
        fault: &'static str,
        /// The endpoint the rule names.
        endpoint: FaultEndpoint,
        /// Where the fault can fire.
        applies_to: &'static str,
    },
    /// `times = 0` would never fire: almost certainly a mistake.
    #[error("times = 0 never fires; omit `times` for always")]
    ZeroTimes,
}

impl FaultRule {
    /// A rule for `endpoint` that always fires.
    pub fn new(endpoint: FaultEndpoint, fault: Fault) -> Self {
        FaultRule {
            endpoint,
            when: FaultWhen::default(),
            fault,
        }
    }

    /// Restrict the rule to requests whose prompt contains `needle`.
    #[must_use]
    pub fn prompt_contains(mut self, needle: impl Into<String>) -> Self {
        self.when.prompt_contains = Some(needle.into());
        self
    }

    /// Let the rule fire for the first `n` matching requests only.
    #[must_use]
    pub fn times(mut self, n: u32) -> Self {
        self.when.times = Some(n);
        self
    }

    /// Check that the rule can ever do what it says.
    pub fn validate(&self) -> Result<(), FaultRuleError> {
        if let Fault::Http { status, .. } = self.fault
            && http::StatusCode::from_u16(status).is_err()
        {
            return Err(FaultRuleError::InvalidStatus(status));
        }
        if self.when.times == Some(0) {
            return Err(FaultRuleError::ZeroTimes);
        }
        let (kind, applies_to) = match self.fault.slot() {
            Slot::Delay | Slot::Terminal => return Ok(()),
            Slot::Truncate => ("truncate_content", "content, last_frame"),
            Slot::IgnoreRange => ("ignore_range", "content"),
            Slot::WithoutContent => ("completed_without_content", "create"),
            Slot::Spelling => ("status_spelling", "create"),
            Slot::Fail => ("fail_task", "create"),
        };
        let fires_somewhere = match self.endpoint {
            FaultEndpoint::Any => true,
            endpoint => self.fault.fires_on(endpoint),
        };
        if fires_somewhere {
            Ok(())
        } else {
            Err(FaultRuleError::WrongEndpoint {
                fault: kind,
                endpoint: self.endpoint,
                applies_to,
            })
        }
    }

    fn matches(&self, endpoint: FaultEndpoint, prompt: Option<&str>) -> bool {
        if !self.endpoint.covers(endpoint) || !self.fault.fires_on(endpoint) {
            return false;
        }
        match (&self.when.prompt_contains, prompt) {
            (None, _) => true,
            (Some(needle), Some(prompt)) => prompt.contains(needle.as_str()),
            (Some(_), None) => false,
        }
    }
}

/// The terminal answer a request gets instead of the normal one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Terminal {
    /// An HTTP error answer.
    Http {
        status: u16,
        retry_after_s: Option<u64>,
    },
    /// Drop the connection without an answer.
    Reset,
}

/// The request-level faults that fired on one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RequestFaults {
    pub delay: Option<Duration>,
    pub terminal: Option<Terminal>,
    pub truncate_after: Option<u64>,
    pub ignore_range: bool,
}

/// The task-level faults bound to a task at create.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TaskFaults {
    pub without_content: bool,
    /// `(processing, completed)` spellings.
    pub spelling: Option<(String, String)>,
    /// `(code, message)`.
    pub fail: Option<(String, String)>,
}

/// The live rule list with each rule's remaining count.
#[derive(Debug, Default)]
pub(crate) struct FaultSet {
    rules: Vec<FaultRule>,
}

impl FaultSet {
    pub fn new(rules: Vec<FaultRule>) -> Self {
        FaultSet { rules }
    }

    pub fn replace(&mut self, rules: Vec<FaultRule>) {
        self.rules = rules;
    }

    pub fn push(&mut self, rule: FaultRule) {
        self.rules.push(rule);
    }

    /// The rules still armed, with `times` showing what is left.
    pub fn snapshot(&self) -> Vec<FaultRule> {
        self.rules.clone()
    }

    /// Fire the first matching rule of every slot that `wanted` accepts, spending one of its
    /// `times`. The filter keeps request-level and task-level evaluation of the same create from
    /// spending each other's rules.
    fn fire(
        &mut self,
        endpoint: FaultEndpoint,
        prompt: Option<&str>,
        wanted: impl Fn(Slot) -> bool,
    ) -> Vec<Fault> {
        let mut used_slots: Vec<Slot> = Vec::new();
        let mut fired = Vec::new();
        for rule in &mut self.rules {
            let slot = rule.fault.slot();
            if !wanted(slot) || used_slots.contains(&slot) || !rule.matches(endpoint, prompt) {
                continue;
            }
            used_slots.push(slot);
            if let Some(times) = rule.when.times.as_mut() {
                *times = times.saturating_sub(1);
            }
            fired.push(rule.fault.clone());
        }
        self.rules.retain(|r| r.when.times != Some(0));
        fired
    }

    /// Request-level faults for one request to `endpoint` (never `Any`).
    pub fn take_request_faults(
        &mut self,
        endpoint: FaultEndpoint,
        prompt: Option<&str>,
    ) -> RequestFaults {
        let mut out = RequestFaults::default();
        for fault in self.fire(endpoint, prompt, |s| {
            matches!(
                s,
                Slot::Delay | Slot::Terminal | Slot::Truncate | Slot::IgnoreRange
            )
        }) {
            match fault {
                Fault::Delay { ms } => out.delay = Some(Duration::from_millis(ms)),
                Fault::Http {
                    status,
                    retry_after_s,
                } => {
                    out.terminal = Some(Terminal::Http {
                        status,
                        retry_after_s,
                    })
                }
                Fault::Reset => out.terminal = Some(Terminal::Reset),
                Fault::TruncateContent { after_bytes } => out.truncate_after = Some(after_bytes),
                Fault::IgnoreRange => out.ignore_range = true,
                Fault::CompletedWithoutContent
                | Fault::StatusSpelling { .. }
                | Fault::FailTask { .. } => {}
            }
        }
        out
    }

    /// Task-level faults for a task being created from `prompt`.
    pub fn take_task_faults(&mut self, prompt: &str) -> TaskFaults {
        let mut out = TaskFaults::default();
        for fault in self.fire(FaultEndpoint::Create, Some(prompt), |s| {
            matches!(s, Slot::WithoutContent | Slot::Spelling | Slot::Fail)
        }) {
            match fault {
                Fault::CompletedWithoutContent => out.without_content = true,
                Fault::StatusSpelling {
                    processing,
                    completed,
                } => out.spelling = Some((processing, completed)),
                Fault::FailTask { code, message } => out.fail = Some((code, message)),
                Fault::Http { .. }
                | Fault::Delay { .. }
                | Fault::Reset
                | Fault::TruncateContent { .. }
                | Fault::IgnoreRange => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16) -> Fault {
        Fault::Http {
            status,
            retry_after_s: None,
        }
    }

    #[test]
    fn first_matching_rule_per_slot_fires_and_times_expire_in_order() {
        let mut set = FaultSet::new(vec![
            FaultRule::new(FaultEndpoint::Create, http(429)).times(1),
            FaultRule::new(FaultEndpoint::Create, http(503)).times(1),
        ]);
        let seen: Vec<Option<Terminal>> = (0..3)
            .map(|_| {
                set.take_request_faults(FaultEndpoint::Create, Some("p"))
                    .terminal
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                Some(Terminal::Http {
                    status: 429,
                    retry_after_s: None
                }),
                Some(Terminal::Http {
                    status: 503,
                    retry_after_s: None
                }),
                None
            ]
        );
        assert!(set.snapshot().is_empty());
    }

    #[test]
    fn rules_of_different_slots_compose() {
        let mut set = FaultSet::new(vec![
            FaultRule::new(FaultEndpoint::Any, Fault::Delay { ms: 5 }),
            FaultRule::new(FaultEndpoint::Get, http(500)),
        ]);
        let f = set.take_request_faults(FaultEndpoint::Get, None);
        assert_eq!(f.delay, Some(Duration::from_millis(5)));
        assert!(f.terminal.is_some());
        let f = set.take_request_faults(FaultEndpoint::Content, None);
        assert!(f.terminal.is_none());
    }

    #[test]
    fn task_level_rules_are_not_spent_by_request_level_evaluation() {
        let mut set = FaultSet::new(vec![
            FaultRule::new(FaultEndpoint::Any, Fault::CompletedWithoutContent).times(1),
            FaultRule::new(FaultEndpoint::Any, Fault::Delay { ms: 1 }).times(2),
        ]);
        let f = set.take_request_faults(FaultEndpoint::Create, Some("x"));
        assert!(f.delay.is_some());
        let t = set.take_task_faults("x");
        assert!(t.without_content);
        let rules = set.snapshot();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].when.times, Some(1));
    }

    #[test]
    fn prompt_condition_needs_a_known_prompt() {
        let mut set = FaultSet::new(vec![
            FaultRule::new(FaultEndpoint::Any, http(502)).prompt_contains("boom"),
        ]);
        assert!(
            set.take_request_faults(FaultEndpoint::Get, None)
                .terminal
                .is_none()
        );
        assert!(
            set.take_request_faults(FaultEndpoint::Get, Some("no"))
                .terminal
                .is_none()
        );
        assert!(
            set.take_request_faults(FaultEndpoint::Get, Some("a boom b"))
                .terminal
                .is_some()
        );
    }

    #[test]
    fn validate_rejects_rules_that_can_never_fire() {
        let cases = [
            (
                FaultRule::new(FaultEndpoint::Get, Fault::IgnoreRange),
                false,
            ),
            (
                FaultRule::new(FaultEndpoint::Content, Fault::IgnoreRange),
                true,
            ),
            (
                FaultRule::new(FaultEndpoint::Get, Fault::CompletedWithoutContent),
                false,
            ),
            (FaultRule::new(FaultEndpoint::Any, Fault::Reset), true),
            (FaultRule::new(FaultEndpoint::Any, http(42)), false),
            (
                FaultRule::new(FaultEndpoint::Any, http(429)).times(0),
                false,
            ),
            (
                FaultRule::new(
                    FaultEndpoint::Create,
                    Fault::TruncateContent { after_bytes: 1 },
                ),
                false,
            ),
        ];
        for (rule, ok) in cases {
            assert_eq!(rule.validate().is_ok(), ok, "{rule:?}");
        }
    }

    #[test]
    fn fault_rules_read_from_json_and_toml() {
        let json = r#"[{"endpoint":"create","when":{"prompt_contains":"x","times":2},
            "fault":{"kind":"http","status":429,"retry_after_s":3}},
            {"fault":{"kind":"status_spelling","processing":"running","completed":"succeeded"}}]"#;
        let rules: Vec<FaultRule> = serde_json::from_str(json).expect("json");
        assert_eq!(rules[0].endpoint, FaultEndpoint::Create);
        assert_eq!(rules[1].endpoint, FaultEndpoint::Any);
        let toml_text =
            "endpoint = \"content\"\nfault = { kind = \"truncate_content\", after_bytes = 10 }\n";
        let rule: FaultRule = toml::from_str(toml_text).expect("toml");
        assert_eq!(rule.fault, Fault::TruncateContent { after_bytes: 10 });
    }
}
