//! `output.filter_state`: the fields of each request's decision the filter leaves in Envoy's
//! filter state (none by default: a configuration that logs nothing pays nothing).

use super::values::shown;
use super::ConfigError;

/// One field of a request's decision, left in filter state as `wasm.token_exchange.<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateField {
    /// What became of the request (`exchanged`, `cached`, `rejected`, …).
    Outcome,
    /// The `error` code the client was sent, when one was.
    Error,
    /// The verified token's `sub`.
    Sub,
    /// The verified token's `iss`.
    Iss,
    /// The minted token's `act.sub`, when it has one.
    Actor,
    /// The token service's name.
    Service,
    /// How long the request waited on the filter's calls (ms).
    StsMs,
    /// The hash prefix the filter's logs name the caller's token by.
    TokenId,
}

impl StateField {
    /// Every field, as the configuration spells it.
    pub const ALL: [(StateField, &'static str); 8] = [
        (StateField::Outcome, "outcome"),
        (StateField::Error, "error"),
        (StateField::Sub, "sub"),
        (StateField::Iss, "iss"),
        (StateField::Actor, "actor"),
        (StateField::Service, "service"),
        (StateField::StsMs, "sts_ms"),
        (StateField::TokenId, "token_id"),
    ];

    /// The field's name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(f, _)| *f == self)
            .map_or("outcome", |(_, n)| n)
    }
}

/// The fields `names` lists, each once.
pub(super) fn validate_filter_state(names: Vec<String>) -> Result<Vec<StateField>, ConfigError> {
    let words: Vec<&str> = StateField::ALL.iter().map(|(_, n)| *n).collect();
    let mut fields = Vec::with_capacity(names.len());
    for name in &names {
        let Some((field, _)) = StateField::ALL.iter().find(|(_, n)| n == name) else {
            return Err(ConfigError::new(
                "output.filter_state",
                format!(
                    "{} is not a field; use {}",
                    shown(name, &words),
                    words.join(", ")
                ),
            ));
        };
        if fields.contains(field) {
            return Err(ConfigError::new(
                "output.filter_state",
                format!("{name} is listed twice"),
            ));
        }
        fields.push(*field);
    }
    Ok(fields)
}
