//! What the supervisor answers on the control socket: a line of JSON, or a refusal written
//! `error: REASON`. Streamed answers (`logs`, `messages`) are a sequence of such lines.

use std::fmt;

/// One answer line, without its newline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The JSON the request asked for.
    Ok(String),
    /// Why the request was refused, or failed: one line that names the problem and the fix.
    Err(String),
}

const REFUSED: &str = "error: ";

impl Answer {
    /// Reads one line as the supervisor wrote it.
    pub fn parse(line: &str) -> Answer {
        let line = line.trim_end_matches(['\n', '\r']);
        match line.strip_prefix(REFUSED) {
            Some(reason) => Answer::Err(reason.to_string()),
            None => Answer::Ok(line.to_string()),
        }
    }

    pub fn into_result(self) -> Result<String, String> {
        match self {
            Answer::Ok(json) => Ok(json),
            Answer::Err(reason) => Err(reason),
        }
    }
}

impl From<Result<String, String>> for Answer {
    fn from(r: Result<String, String>) -> Answer {
        match r {
            Ok(json) => Answer::Ok(json),
            Err(reason) => Answer::Err(reason),
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Ok(json) => f.write_str(json),
            Answer::Err(reason) => write!(f, "{REFUSED}{reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_as_written() {
        for a in [
            Answer::Ok(r#"{"slots":[]}"#.into()),
            Answer::Ok(String::new()),
            Answer::Err("busy: a reload or scale is under way".into()),
        ] {
            assert_eq!(Answer::parse(&format!("{a}\n")), a);
        }
        assert_eq!(
            Answer::Err("no slot 9".into()).to_string(),
            "error: no slot 9"
        );
    }
}
