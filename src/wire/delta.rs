//! The layout of a delta on the wire.
//!
//! ```text
//! delta   = [part...]                      parts sorted by replica id
//! part    = [replica, base, entries, removals?, floor?, events?, dead?]
//! replica = [name, started_ms, nonce]
//! base    = the smallest counter of events and dead
//! entries = flat [topic, key, meta, dot_step, pid_back]...
//!             topic     a string the first time it appears in the message,
//!                       then its index among the message's topics
//!             dot_step  dot - base for the first entry, then dot - previous dot
//!             pid_back  dot - presence counter (0 for a presence never updated)
//! removals= flat [event_step, dot_back]...  event - base, then event - previous;
//!                                           event - removed dot
//! floor   = the history floor (absent: 0)
//! events  = ranges (absent or nil: the dots of the entries and the events
//!           of the removals)
//! dead    = ranges (absent: the removed dots that are not events)
//! ranges  = flat [lo - base, hi - lo, lo - previous hi - 2, hi - lo]...
//! ```
//!
//! Trailing fields equal to their default are left out, so a lone join is
//! `[replica, base, [topic, key, meta, 0, 0]]`.

use hashbrown::HashMap;
use smallvec::SmallVec;

use super::WireError;
use super::msgpack::{Reader, write_array, write_str, write_uint};
use crate::state::store::Payload;
use crate::state::{
    CounterSet, Delta, Incarnation, Key, MAX_COUNTER, Meta, Part, PartEntry, Removal, ReplicaId,
    ReplicaName, Topic,
};

/// The events a part's entries and removals spell out.
fn implied_events(entries: &[u64], removals: &[Removal]) -> CounterSet {
    let mut events = CounterSet::new();
    for &dot in entries {
        events.insert(dot);
    }
    for r in removals {
        events.insert(r.event);
    }
    events
}

/// The dead dots a part's removals spell out, given its events.
fn implied_dead(removals: &[Removal], events: &CounterSet) -> CounterSet {
    let mut dead = CounterSet::new();
    for r in removals {
        dead.insert(r.dot);
    }
    dead.subtract(events);
    dead
}

fn write_ranges(out: &mut Vec<u8>, set: &CounterSet, base: u64) -> Result<(), WireError> {
    write_array(out, set.ranges().len() * 2)?;
    let mut previous: Option<u64> = None;
    for (lo, hi) in set.ranges() {
        match previous {
            None => write_uint(out, lo - base),
            Some(p) => write_uint(out, lo - p - 2),
        }
        write_uint(out, hi - lo);
        previous = Some(hi);
    }
    Ok(())
}

fn read_ranges(reader: &mut Reader<'_>, base: u64) -> Result<CounterSet, WireError> {
    let flat = reader.array(1)?;
    if flat % 2 != 0 {
        return Err(WireError::Malformed("ranges come in pairs"));
    }
    let mut ranges = Vec::new();
    let mut previous: Option<u64> = None;
    for _ in 0..flat / 2 {
        let gap = reader.uint()?;
        let lo = match previous {
            None => add(base, gap)?,
            Some(p) => add(add(p, 2)?, gap)?,
        };
        let hi = add(lo, reader.uint()?)?;
        ranges.push((lo, hi));
        previous = Some(hi);
    }
    CounterSet::from_sorted_ranges(ranges).ok_or(WireError::Malformed("ranges overlap"))
}

pub(crate) fn write<M: Meta>(out: &mut Vec<u8>, delta: &Delta<M>) -> Result<(), WireError> {
    let parts: Vec<&Part<M>> = delta.parts.iter().filter(|p| !p.is_empty()).collect();
    write_array(out, parts.len())?;
    let mut topic_refs: HashMap<&str, u64> = HashMap::default();
    for part in parts {
        let dots: Vec<u64> = part.entries.iter().map(|e| e.dot).collect();
        let explicit_events = implied_events(&dots, &part.removals) != part.context;
        let explicit_dead = implied_dead(&part.removals, &part.context) != part.dead;
        let fields = if explicit_dead {
            7
        } else if explicit_events {
            6
        } else if part.history_floor != 0 {
            5
        } else if !part.removals.is_empty() {
            4
        } else {
            3
        };
        write_array(out, fields)?;
        let id = &part.replica;
        write_array(out, 3)?;
        write_str(out, id.name().as_str())?;
        write_uint(out, id.incarnation().started_ms());
        write_uint(out, u64::from(id.incarnation().nonce()));
        let base = match (part.context.min(), part.dead.min()) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(1),
        };
        write_uint(out, base);
        write_array(out, part.entries.len() * 5)?;
        let mut previous = base;
        for e in &part.entries {
            let topic = delta.topics[e.topic as usize].as_str();
            match topic_refs.get(topic) {
                Some(&index) => write_uint(out, index),
                None => {
                    topic_refs.insert(topic, topic_refs.len() as u64);
                    write_str(out, topic)?;
                }
            }
            write_str(out, e.payload.key.as_str())?;
            rmp_serde::encode::write(out, &e.payload.meta)
                .map_err(|err| WireError::MetaEncoding(err.to_string()))?;
            write_uint(out, e.dot - previous);
            write_uint(out, e.dot - e.pid);
            previous = e.dot;
        }
        if fields >= 4 {
            write_array(out, part.removals.len() * 2)?;
            let mut previous = base;
            for r in &part.removals {
                write_uint(out, r.event - previous);
                write_uint(out, r.event - r.dot);
                previous = r.event;
            }
        }
        if fields >= 5 {
            write_uint(out, part.history_floor);
        }
        if fields >= 6 {
            if explicit_events {
                write_ranges(out, &part.context, base)?;
            } else {
                rmp::encode::write_nil(out).expect("writing to a Vec cannot fail");
            }
        }
        if fields == 7 {
            write_ranges(out, &part.dead, base)?;
        }
    }
    Ok(())
}

/// A counter plus a step, refused past [`MAX_COUNTER`].
fn add(a: u64, b: u64) -> Result<u64, WireError> {
    a.checked_add(b)
        .filter(|&c| c <= MAX_COUNTER)
        .ok_or(WireError::Malformed("counter above 2^53"))
}

pub(crate) fn read<M: Meta>(reader: &mut Reader<'_>) -> Result<Delta<M>, WireError> {
    let count = reader.array(4)?;
    // Nothing is reserved from counts the peer sent: collections grow with
    // what is actually decoded.
    let mut delta = Delta::default();
    let mut table = TopicTable::default();
    for _ in 0..count {
        let part = read_part(reader, &mut table)?;
        if let Some(last) = delta.parts.last()
            && last.replica >= part.replica
        {
            return Err(WireError::Malformed("parts are not sorted by replica"));
        }
        delta.parts.push(part);
    }
    delta.topics = table.topics;
    Ok(delta)
}

/// The topics of a message, in order of first appearance, with an index by
/// name to refuse a topic sent twice.
#[derive(Default)]
struct TopicTable {
    topics: SmallVec<[Topic; 1]>,
    names: HashMap<Topic, u32>,
}

fn read_part<M: Meta>(
    reader: &mut Reader<'_>,
    table: &mut TopicTable,
) -> Result<Part<M>, WireError> {
    let fields = reader.array(1)?;
    if !(3..=7).contains(&fields) {
        return Err(WireError::Malformed("a part has 3 to 7 fields"));
    }
    if reader.array(1)? != 3 {
        return Err(WireError::Malformed("a replica id has 3 fields"));
    }
    let name = ReplicaName::new(reader.str()?)
        .map_err(|_| WireError::Malformed("invalid replica name"))?;
    let started_ms = add(reader.uint()?, 0)?;
    let nonce = reader.u32()?;
    let mut part = Part::new(ReplicaId::new(name, Incarnation::new(started_ms, nonce)));
    let base = add(reader.uint()?, 0)?;
    if base == 0 {
        return Err(WireError::Malformed("counters start at 1"));
    }

    let flat = reader.array(1)?;
    if flat % 5 != 0 {
        return Err(WireError::Malformed("entries come in fives"));
    }
    let mut dots = Vec::new();
    for i in 0..flat / 5 {
        let topic = match reader.peek_marker()? {
            rmp::Marker::FixPos(_)
            | rmp::Marker::U8
            | rmp::Marker::U16
            | rmp::Marker::U32
            | rmp::Marker::U64 => {
                let index = reader.uint()?;
                if index >= table.topics.len() as u64 {
                    return Err(WireError::Malformed("topic index out of range"));
                }
                index as u32
            }
            _ => {
                let name = reader.str()?;
                if name.is_empty() {
                    return Err(WireError::Malformed("empty topic"));
                }
                if table.names.contains_key(name) {
                    return Err(WireError::Malformed("topic sent twice"));
                }
                let topic = Topic::from(name);
                let index = table.topics.len() as u32;
                table.names.insert(topic.clone(), index);
                table.topics.push(topic);
                index
            }
        };
        let key = reader.str()?;
        if key.is_empty() {
            return Err(WireError::Malformed("empty key"));
        }
        let start = reader.position();
        reader.skip_value()?;
        let meta = rmp_serde::from_slice::<M>(reader.slice(start)).ok();
        let step = reader.uint()?;
        if i > 0 && step == 0 {
            return Err(WireError::Malformed("entries are not sorted by dot"));
        }
        let dot = add(dots.last().copied().unwrap_or(base), step)?;
        let back = reader.uint()?;
        if back >= dot {
            return Err(WireError::Malformed("presence counter out of range"));
        }
        let pid = dot - back;
        dots.push(dot);
        match meta {
            Some(meta) => part.entries.push(PartEntry {
                dot,
                pid,
                topic,
                payload: Payload::new(Key::from(key), meta),
            }),
            None => part.undecodable += 1,
        }
    }

    if fields >= 4 {
        let flat = reader.array(1)?;
        if flat % 2 != 0 {
            return Err(WireError::Malformed("removals come in pairs"));
        }
        let mut previous = base;
        for i in 0..flat / 2 {
            let step = reader.uint()?;
            if i > 0 && step == 0 {
                return Err(WireError::Malformed("removals are not sorted by event"));
            }
            let event = add(previous, step)?;
            let back = reader.uint()?;
            if back == 0 || back >= event {
                return Err(WireError::Malformed("removed dot out of range"));
            }
            part.removals.push(Removal {
                event,
                dot: event - back,
            });
            previous = event;
        }
        // A removed dot is removed once, and is not among the live entries.
        let mut removed: Vec<u64> = part.removals.iter().map(|r| r.dot).collect();
        removed.sort_unstable();
        if removed.windows(2).any(|w| w[0] == w[1]) {
            return Err(WireError::Malformed("a dot is removed twice"));
        }
        if removed.iter().any(|d| dots.binary_search(d).is_ok()) {
            return Err(WireError::Malformed("a removed dot is also live"));
        }
    }
    if fields >= 5 {
        part.history_floor = reader.uint()?;
    }
    let mut events = implied_events(&dots, &part.removals);
    if fields >= 6 {
        if reader.peek_marker()? == rmp::Marker::Null {
            reader.byte()?;
        } else {
            let explicit = read_ranges(reader, base)?;
            if !explicit.is_superset(&events) || explicit == events {
                return Err(WireError::Malformed("events do not cover the entries"));
            }
            events = explicit;
        }
    }
    let mut dead = implied_dead(&part.removals, &events);
    if fields == 7 {
        let explicit = read_ranges(reader, base)?;
        if !explicit.is_superset(&dead) || explicit == dead {
            return Err(WireError::Malformed("dead dots do not cover the removals"));
        }
        let mut overlap = explicit.clone();
        overlap.subtract(&events);
        if overlap != explicit {
            return Err(WireError::Malformed("a dot is both an event and dead"));
        }
        dead = explicit;
    }
    let smallest = match (events.min(), dead.min()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if smallest != Some(base) {
        return Err(WireError::Malformed("base is not the smallest counter"));
    }
    if part.history_floor > events.max() {
        return Err(WireError::Malformed(
            "history floor above the part's events",
        ));
    }
    part.context = events;
    part.dead = dead;
    Ok(part)
}
