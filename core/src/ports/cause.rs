//! What the port errors (`BusError`, `SliceError`, `ArchiveError`, `NotifyError`)
//! share: the adapter's own error kept as the `source`, and a one-line Display of
//! what failed followed by that cause (what the log lines print).

use std::fmt;

/// An adapter's own error (a driver's, an I/O error), kept as a port error's source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Displays `: <cause>` after a port error's context, or nothing without a cause.
pub(crate) struct Cause<'a>(pub(crate) &'a Option<BoxError>);

impl fmt::Display for Cause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(e) => write!(f, ": {e}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        ArchiveError, ArchiveErrorKind, BusError, BusErrorKind, NotifyError, NotifyErrorKind,
        SliceError, SliceErrorKind,
    };
    use std::error::Error;

    fn io(msg: &str) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, msg.to_string())
    }

    /// The chain down to the adapter's own error: its type and message survive.
    fn root_io<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a std::io::Error> {
        e.source()?.downcast_ref::<std::io::Error>()
    }

    #[test]
    fn port_errors_keep_their_cause_and_kind() {
        let e = SliceError::unavailable("append").with_source(io("refused"));
        assert_eq!(e.kind(), SliceErrorKind::Unavailable);
        assert_eq!(e.to_string(), "slice store unavailable: append: refused");
        assert_eq!(
            root_io(&e).map(|c| c.kind()),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        let e = SliceError::corrupt("truncated item");
        assert_eq!(e.kind(), SliceErrorKind::Corrupt);
        assert!(e.source().is_none());
        assert_eq!(e.to_string(), "slice store data corrupt: truncated item");

        let e = BusError::unavailable("publish").with_source(io("timed out"));
        assert_eq!(e.kind(), BusErrorKind::Unavailable);
        assert_eq!(root_io(&e).unwrap().to_string(), "timed out");
        assert_eq!(BusError::other("commit").kind(), BusErrorKind::Other);

        let e = ArchiveError::unavailable("read_segment").with_source(io("down"));
        assert_eq!(e.kind(), ArchiveErrorKind::Unavailable);
        assert!(root_io(&e).is_some());
        assert_eq!(ArchiveError::NotFound.kind(), ArchiveErrorKind::NotFound);
        assert_eq!(
            ArchiveError::AlreadyExists.kind(),
            ArchiveErrorKind::Conflict
        );
        assert_eq!(
            ArchiveError::AlreadyEnded.kind(),
            ArchiveErrorKind::Conflict
        );
        assert!(ArchiveError::AlreadyEnded.source().is_none());

        let e = NotifyError::unavailable("subscribe").with_source(io("reset"));
        assert_eq!(e.kind(), NotifyErrorKind::Unavailable);
        assert_eq!(e.to_string(), "notifier unavailable: subscribe: reset");
        assert!(root_io(&e).is_some());
    }

    /// Wrapped by a caller's own error (the archive role's), the whole chain is
    /// still there to walk.
    #[test]
    fn the_chain_survives_wrapping() {
        #[derive(Debug, thiserror::Error)]
        #[error("archiving failed")]
        struct Outer(#[source] SliceError);
        let outer = Outer(SliceError::other("claim").with_source(io("broken pipe")));
        let mut chain = Vec::new();
        let mut at: Option<&(dyn Error + 'static)> = Some(&outer);
        while let Some(e) = at {
            chain.push(e.to_string());
            at = e.source();
        }
        assert_eq!(
            chain,
            vec![
                "archiving failed".to_string(),
                "slice store error: claim: broken pipe".to_string(),
                "broken pipe".to_string(),
            ]
        );
    }
}
