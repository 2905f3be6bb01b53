//! How errors read. Every stage returns its own error type, with the error
//! that caused it kept as its [`source`](std::error::Error::source) and
//! left out of its own message; [`chain`] prints the message and its
//! causes as one line, where an error reaches a log or a person.

use std::error::Error;
use std::fmt;
use std::path::PathBuf;

/// `error` and each of its causes, joined by `: `, as `anyhow` prints
/// `{:#}`; a cause whose text its error already ends with (some libraries
/// print their source in their own message) is not repeated.
pub fn chain<'a>(error: &'a (dyn Error + 'static)) -> Chain<'a> {
    Chain(error)
}

/// See [`chain`].
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.source().is_none() {
            return write!(f, "{}", self.0);
        }
        let mut said = self.0.to_string();
        f.write_str(&said)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let text = e.to_string();
            if !said.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            said = text;
            cause = e.source();
        }
        Ok(())
    }
}

/// A file or folder the system would not let vigil read, write, create
/// or remove: the error every stage gives for one.
#[derive(Debug, thiserror::Error)]
#[error("cannot {verb} {}", path.display())]
pub struct FileError {
    /// What was being done to it: `read`, `write`, `create`, `remove`…
    pub verb: &'static str,
    /// The file or folder.
    pub path: PathBuf,
    /// What the system said.
    pub source: std::io::Error,
}

impl FileError {
    /// The error of `verb` on `path`, for `map_err`.
    pub fn of(verb: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| FileError { verb, path, source }
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}")]
    struct Read {
        path: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn the_chain_names_every_cause_once() {
        let e = Read { path: "a.json", source: std::io::Error::other("disk on fire") };
        assert_eq!(super::chain(&e).to_string(), "cannot read a.json: disk on fire");
        assert_eq!(e.to_string(), "cannot read a.json");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("send failed: {source}")]
    struct Repeats {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_its_errors_text_is_not_repeated() {
        let e =
            Read { path: "b.json", source: std::io::Error::other(Repeats { source: std::io::Error::other("full") }) };
        assert_eq!(super::chain(&e).to_string(), "cannot read b.json: send failed: full");
    }
}
