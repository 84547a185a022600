//! A consumer's retry buffer: messages delivered with explicit acks and not yet acked.
//!
//! Entries are keyed by sequence number for single and cumulative acks. Ack deadlines sit
//! in a queue in the order they were set. Every deadline is "now plus the same ack
//! timeout", so that order is also deadline order and the timeout scan only looks at the
//! front. A deadline whose entry was acked or redelivered since is skipped when popped.

use super::ring::StoredMessage;
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

/// One unacked message.
#[derive(Debug, Clone)]
pub struct RetryEntry {
    pub message: StoredMessage,
    /// How many times the message has been sent to the consumer, 1 on first delivery.
    pub delivery_count: u32,
    pub deadline: Instant,
}

/// The unacked messages of one consumer.
#[derive(Debug, Default)]
pub struct RetryBuffer {
    entries: BTreeMap<u64, RetryEntry>,
    deadlines: VecDeque<(Instant, u64)>,
    /// Sum of the payload sizes of `entries`.
    bytes: usize,
}

impl RetryBuffer {
    /// Returns the number of unacked messages.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Returns the sum of the unacked payload sizes, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Returns true when every delivered message has been acked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records a first delivery of `seq`, due for redelivery at `deadline`.
    pub fn insert(&mut self, seq: u64, message: StoredMessage, deadline: Instant) {
        self.bytes += message.payload.len();
        let replaced = self.entries.insert(
            seq,
            RetryEntry {
                message,
                delivery_count: 1,
                deadline,
            },
        );
        if let Some(old) = replaced {
            self.bytes -= old.message.payload.len();
        }
        self.deadlines.push_back((deadline, seq));
    }

    /// Removes `seq`; returns false when it was not in the buffer.
    pub fn ack(&mut self, seq: u64) -> bool {
        match self.entries.remove(&seq) {
            Some(entry) => {
                self.bytes -= entry.message.payload.len();
                true
            }
            None => false,
        }
    }

    /// Removes every entry with a sequence number at or below `seq`; returns how many.
    pub fn ack_up_to(&mut self, seq: u64) -> usize {
        let kept = match seq.checked_add(1) {
            Some(next) => self.entries.split_off(&next),
            None => BTreeMap::new(),
        };
        let removed = std::mem::replace(&mut self.entries, kept);
        self.bytes -= removed
            .values()
            .map(|entry| entry.message.payload.len())
            .sum::<usize>();
        removed.len()
    }

    /// Moves the sequence numbers whose deadline is at or before `now` into `due`, in
    /// deadline order.
    pub fn take_expired(&mut self, now: Instant, due: &mut VecDeque<u64>) {
        while let Some(&(deadline, seq)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if self
                .entries
                .get(&seq)
                .is_some_and(|e| e.deadline == deadline)
            {
                due.push_back(seq);
            }
        }
    }

    /// Marks `seq` as sent again, due at `deadline`; returns the entry, or `None` when it
    /// was acked in the meantime.
    pub fn redeliver(&mut self, seq: u64, deadline: Instant) -> Option<&RetryEntry> {
        let entry = self.entries.get_mut(&seq)?;
        entry.delivery_count = entry.delivery_count.saturating_add(1);
        entry.deadline = deadline;
        self.deadlines.push_back((deadline, seq));
        Some(entry)
    }

    /// Returns every unacked sequence number in ascending order.
    pub fn sequence_numbers(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.keys().copied()
    }

    /// Drops deadline records that no longer match an entry, so the queue stays
    /// proportional to the number of entries.
    pub fn compact(&mut self) {
        if self.deadlines.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.deadlines.retain(|(deadline, seq)| {
                entries.get(seq).is_some_and(|e| e.deadline == *deadline)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn message() -> StoredMessage {
        StoredMessage {
            timestamp: 0,
            payload: Bytes::from_static(b"m"),
        }
    }

    #[test]
    fn ack_and_cumulative_ack() {
        let now = Instant::now();
        let mut retry = RetryBuffer::default();
        for seq in 1..=5 {
            retry.insert(seq, message(), now);
        }
        assert!(retry.ack(3));
        assert!(!retry.ack(3));
        assert_eq!(retry.ack_up_to(4), 3);
        assert_eq!(retry.sequence_numbers().collect::<Vec<_>>(), vec![5]);
        assert_eq!(retry.bytes(), 1);
        assert_eq!(retry.ack_up_to(u64::MAX), 1);
        assert!(retry.is_empty());
        assert_eq!(retry.bytes(), 0);
    }

    #[test]
    fn expiry_skips_acked_and_redelivered() {
        let start = Instant::now();
        let timeout = Duration::from_secs(1);
        let mut retry = RetryBuffer::default();
        retry.insert(1, message(), start + timeout);
        retry.insert(2, message(), start + timeout);
        retry.insert(3, message(), start + timeout * 2);
        retry.ack(2);

        let mut due = VecDeque::new();
        retry.take_expired(start, &mut due);
        assert!(due.is_empty());
        retry.take_expired(start + timeout, &mut due);
        assert_eq!(due, [1]);

        let entry = retry.redeliver(1, start + timeout * 3).unwrap();
        assert_eq!(entry.delivery_count, 2);
        due.clear();
        retry.take_expired(start + timeout * 2, &mut due);
        assert_eq!(due, [3]);
        due.clear();
        retry.take_expired(start + timeout * 3, &mut due);
        assert_eq!(due, [1]);
    }

    #[test]
    fn compact_drops_stale_deadlines() {
        let now = Instant::now();
        let mut retry = RetryBuffer::default();
        for seq in 1..=200 {
            retry.insert(seq, message(), now);
        }
        retry.ack_up_to(199);
        retry.compact();
        let mut due = VecDeque::new();
        retry.take_expired(now, &mut due);
        assert_eq!(due, [200]);
    }
}
