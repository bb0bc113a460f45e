//! Arbitrary bytes decode to an error or to a delta that survives a round
//! trip; nothing panics.
#![no_main]

use attendance::wire;
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    online_at: u64,
    device: String,
}

fuzz_target!(|bytes: &[u8]| {
    if let Ok(delta) = wire::decode::<Meta>(bytes) {
        let encoded = wire::encode(&delta).expect("a decoded delta encodes");
        let again = wire::decode::<Meta>(&encoded).expect("an encoded delta decodes");
        if delta.undecodable() == 0 {
            assert_eq!(again, delta);
        } else {
            // Entries whose meta did not decode are not sent on.
            assert_eq!(again.undecodable(), 0);
            assert_eq!(again.entry_count(), delta.entry_count());
        }
    }
});
