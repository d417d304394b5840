//! The opaque live cursor handed to clients: a per-room `seq` (derived from the
//! Bus offset), encoded so clients do not mistake it for a timestamp.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const VERSION: u8 = 1;

/// Position in a room's live stream: everything with `seq <= self.0` is before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Cursor(pub u64);

impl Cursor {
    pub fn encode(self) -> String {
        let mut buf = [0u8; 9];
        buf[0] = VERSION;
        buf[1..].copy_from_slice(&self.0.to_be_bytes());
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Parses a cursor; `None` for anything this server did not hand out.
    pub fn decode(s: &str) -> Option<Self> {
        if s.len() != 12 {
            return None;
        }
        let buf = URL_SAFE_NO_PAD.decode(s).ok()?;
        if buf.len() != 9 || buf[0] != VERSION {
            return None;
        }
        Some(Cursor(u64::from_be_bytes(buf[1..].try_into().ok()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for s in [0, 1, 42, u64::MAX] {
            let c = Cursor(s);
            assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(Cursor::decode(""), None);
        assert_eq!(Cursor::decode("12345"), None);
        assert_eq!(Cursor::decode("!!!!!!!!!!!!"), None);
        let mut bad = [0u8; 9];
        bad[0] = 9;
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode(bad)), None);
    }
}
