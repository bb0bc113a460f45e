//! The subjects a replica publishes and subscribes on, and the subject
//! token a replica name becomes.

use crate::ReplicaName;

/// Which of a replica's three subjects a message came on: each has its own
/// sequence numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    /// `<prefix>.<cluster>.bcast.<sender>`: intervals and heartbeats.
    Broadcast = 0,
    /// `<prefix>.<cluster>.rpc.<to>.<sender>`: catch-up requests.
    Request = 1,
    /// `<prefix>.<cluster>.inbox.<to>.<sender>`: catch-up answers and
    /// heartbeats for one replica.
    Inbox = 2,
}

impl Stream {
    pub(crate) const ALL: [Stream; 3] = [Stream::Broadcast, Stream::Request, Stream::Inbox];

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The NATS subject token a replica name is written as: ASCII letters,
/// digits and `-` stand for themselves; every other byte (`_` included) is
/// `_` and two lowercase hex digits. So a token never holds `.`, `*`, `>`
/// or whitespace, two names never share a token, and the usual names
/// (`node-1`, `web-7f9c`) read as they are in subjects and permissions.
///
/// ```
/// use attendance::ReplicaName;
/// use attendance::transport::nats::subject_token;
///
/// assert_eq!(subject_token(&ReplicaName::new("node-1").unwrap()), "node-1");
/// assert_eq!(subject_token(&ReplicaName::new("eu.web_2").unwrap()), "eu_2eweb_5f2");
/// ```
pub fn subject_token(name: &ReplicaName) -> String {
    let mut token = String::with_capacity(name.as_str().len());
    for &b in name.as_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            token.push(char::from(b));
        } else {
            token.push('_');
            token.push(hex_digit(b >> 4));
            token.push(hex_digit(b & 0xf));
        }
    }
    token
}

fn hex_digit(n: u8) -> char {
    char::from(if n < 10 { b'0' + n } else { b'a' + n - 10 })
}

/// The name a token stands for; `None` for a token [`subject_token`]
/// never makes.
pub(crate) fn name_of_token(token: &str) -> Option<ReplicaName> {
    let bytes = token.as_bytes();
    let mut name = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'_' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            let byte = hi << 4 | lo;
            // The escape of a byte that stands for itself is never made.
            if byte.is_ascii_alphanumeric() || byte == b'-' {
                return None;
            }
            name.push(byte);
            i += 3;
        } else if b.is_ascii_alphanumeric() || b == b'-' {
            name.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    let name = String::from_utf8(name).ok()?;
    ReplicaName::new(&name).ok()
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Whether `s` is usable as dot-separated subject tokens: no empty token,
/// no wildcard, no whitespace.
pub(crate) fn valid_subject_part(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|t| {
            !t.is_empty()
                && !t
                    .chars()
                    .any(|c| c == '*' || c == '>' || c.is_whitespace() || c.is_control())
        })
}

/// One replica's subjects under a prefix and cluster name.
#[derive(Clone, Debug)]
pub(crate) struct Subjects {
    /// `<prefix>.<cluster>`
    base: String,
    /// This replica's token.
    me: String,
}

impl Subjects {
    pub(crate) fn new(prefix: &str, cluster: &str, me: &ReplicaName) -> Self {
        Self {
            base: format!("{prefix}.{cluster}"),
            me: subject_token(me),
        }
    }

    pub(crate) fn my_token(&self) -> &str {
        &self.me
    }

    /// Where this replica broadcasts.
    pub(crate) fn broadcast(&self) -> String {
        format!("{}.bcast.{}", self.base, self.me)
    }

    /// Where this replica asks `to` for a catch-up.
    pub(crate) fn request(&self, to: &str) -> String {
        format!("{}.rpc.{to}.{}", self.base, self.me)
    }

    /// Where this replica sends what is for `to` alone; also the reply
    /// subject of `to`'s requests to this replica, where the server says
    /// "no responders".
    pub(crate) fn inbox(&self, to: &str) -> String {
        format!("{}.inbox.{to}.{}", self.base, self.me)
    }

    /// The reply subject of this replica's requests to `holder`.
    pub(crate) fn reply_from(&self, holder: &str) -> String {
        format!("{}.inbox.{}.{holder}", self.base, self.me)
    }

    /// A probe of this replica's own permissions: one subject per stream,
    /// addressed to itself, with the reply subject a request carries.
    pub(crate) fn own(&self) -> [(Stream, String, Option<String>); 3] {
        let me = self.my_token();
        [
            (Stream::Broadcast, self.broadcast(), None),
            (Stream::Request, self.request(me), Some(self.reply_from(me))),
            (Stream::Inbox, self.inbox(me), None),
        ]
    }

    /// The three subscriptions: every broadcast, requests to this replica,
    /// its inbox.
    pub(crate) fn subscriptions(&self) -> [String; 3] {
        [
            format!("{}.bcast.*", self.base),
            format!("{}.rpc.{}.*", self.base, self.me),
            format!("{}.inbox.{}.*", self.base, self.me),
        ]
    }

    /// The sender token of a subject this replica subscribed to: its last
    /// token, after the base and stream parts this replica expects.
    pub(crate) fn sender_token<'a>(&self, stream: Stream, subject: &'a str) -> Option<&'a str> {
        let rest = subject
            .strip_prefix(self.base.as_str())?
            .strip_prefix('.')?;
        let rest = match stream {
            Stream::Broadcast => rest.strip_prefix("bcast.")?,
            Stream::Request => rest.strip_prefix("rpc.")?.strip_prefix(self.me.as_str())?,
            Stream::Inbox => rest
                .strip_prefix("inbox.")?
                .strip_prefix(self.me.as_str())?,
        };
        let token = match stream {
            Stream::Broadcast => rest,
            Stream::Request | Stream::Inbox => rest.strip_prefix('.')?,
        };
        (!token.is_empty() && !token.contains('.')).then_some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ReplicaName {
        ReplicaName::new(s).unwrap()
    }

    #[test]
    fn tokens_round_trip_and_hold_no_subject_syntax() {
        for s in [
            "node-1",
            "a.b",
            "*",
            ">",
            "with space",
            "tab\there",
            "_",
            "_41",
            "é→ü",
            "UPPER-lower-09",
        ] {
            let token = subject_token(&name(s));
            assert!(
                !token
                    .chars()
                    .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace()),
                "{token}"
            );
            assert_eq!(name_of_token(&token), Some(name(s)), "{s}");
        }
    }

    #[test]
    fn tokens_no_encoder_makes_are_refused() {
        for t in ["", "_4", "_zz", "_41", "a.b", "a*", "_2E"] {
            assert_eq!(name_of_token(t), None, "{t}");
        }
    }

    #[test]
    fn distinct_names_get_distinct_tokens() {
        let names = ["a_2e", "a.", "a_", "a_5f", "a-"];
        let tokens: std::collections::BTreeSet<String> =
            names.iter().map(|n| subject_token(&name(n))).collect();
        assert_eq!(tokens.len(), names.len());
    }

    #[test]
    fn sender_tokens_are_read_from_the_expected_subjects_only() {
        let s = Subjects::new("attendance", "prod", &name("me"));
        assert_eq!(
            s.sender_token(Stream::Broadcast, "attendance.prod.bcast.x"),
            Some("x")
        );
        assert_eq!(
            s.sender_token(Stream::Request, "attendance.prod.rpc.me.x"),
            Some("x")
        );
        assert_eq!(
            s.sender_token(Stream::Inbox, "attendance.prod.inbox.me.x"),
            Some("x")
        );
        for (stream, subject) in [
            (Stream::Request, "attendance.prod.rpc.other.x"),
            (Stream::Inbox, "attendance.prod.inbox.mex.x"),
            (Stream::Broadcast, "attendance.prod.bcast.x.y"),
            (Stream::Broadcast, "attendance.test.bcast.x"),
            (Stream::Broadcast, "attendance.prod.bcast."),
        ] {
            assert_eq!(s.sender_token(stream, subject), None, "{subject}");
        }
        assert_eq!(s.request("x"), "attendance.prod.rpc.x.me");
        assert_eq!(s.inbox("x"), "attendance.prod.inbox.x.me");
        assert_eq!(s.reply_from("x"), "attendance.prod.inbox.me.x");
    }

    #[test]
    fn subject_parts_with_wildcards_or_gaps_are_refused() {
        assert!(valid_subject_part("attendance"));
        assert!(valid_subject_part("app.attendance"));
        for bad in ["", "a..b", ".a", "a.", "a*", "a.>", "a b"] {
            assert!(!valid_subject_part(bad), "{bad}");
        }
    }
}
