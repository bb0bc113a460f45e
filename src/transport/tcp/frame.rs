//! Frames after the handshake: the tags that authenticate them, the
//! length-delimited codec, and writing one to a link.

use std::io;

use bytes::{Bytes, BytesMut};
use hmac::Mac;
use tokio::io::{AsyncWriteExt, BufWriter, WriteHalf};
use tokio_util::codec::{LengthDelimitedCodec, LengthDelimitedCodecError};

use super::link::Conn;
use super::stats::{Counters, add, bump};
use super::{FRAME_OVERHEAD, HmacSha256, LENGTH_LEN, TAG_LEN};

/// The tags of one direction of a link.
pub(super) struct FrameMac {
    /// Keyed with the session key.
    pub(super) key: HmacSha256,
    pub(super) direction: u8,
    pub(super) seq: u64,
}

impl FrameMac {
    fn mac(&self, payload: &[u8]) -> HmacSha256 {
        let mut mac = self.key.clone();
        mac.update(&[self.direction]);
        mac.update(&self.seq.to_be_bytes());
        mac.update(payload);
        mac
    }

    pub(super) fn seal(&mut self, payload: &[u8]) -> [u8; TAG_LEN] {
        let full = self.mac(payload).finalize().into_bytes();
        self.seq = self.seq.wrapping_add(1);
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// The payload of a frame whose tag verifies.
    pub(super) fn open(&mut self, mut frame: BytesMut) -> Option<Bytes> {
        let len = frame.len().checked_sub(TAG_LEN)?;
        let (payload, tag) = frame.split_at(len);
        let ok = self.mac(payload).verify_truncated_left(tag).is_ok();
        self.seq = self.seq.wrapping_add(1);
        if !ok {
            return None;
        }
        frame.truncate(len);
        Some(frame.freeze())
    }
}

pub(super) fn codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(LENGTH_LEN)
        .big_endian()
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

pub(super) fn is_oversized(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
}

pub(super) async fn write_frame(
    out: &mut BufWriter<WriteHalf<Conn>>,
    seal: &mut FrameMac,
    counters: &Counters,
    payload: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(payload.len() + TAG_LEN)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let tag = seal.seal(payload);
    out.write_all(&len.to_be_bytes()).await?;
    out.write_all(payload).await?;
    out.write_all(&tag).await?;
    bump(&counters.frames_sent);
    add(&counters.bytes_sent, FRAME_OVERHEAD + payload.len());
    Ok(())
}
