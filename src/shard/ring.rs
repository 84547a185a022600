//! The per-topic ring buffer of retained messages.
//!
//! Messages are kept in sequence order with no holes: the message at index `i` has
//! sequence number `first_seq + i`. Eviction only removes from the front, so lookup by
//! sequence number is an index computation and lookup by time is a binary search over
//! non-decreasing timestamps.

use bytes::Bytes;
use std::collections::VecDeque;
use std::time::Duration;

/// Limits on what one topic retains. The newest message is always kept by the count and
/// byte limits, so that a single message larger than `max_bytes` can still be delivered.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Maximum number of messages, at least 1.
    pub max_messages: usize,
    /// Maximum sum of payload sizes, in bytes.
    pub max_bytes: usize,
    /// Maximum age, measured from the broker timestamp.
    pub max_age: Duration,
}

/// One retained message. `timestamp` is in nanoseconds since the Unix epoch.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub timestamp: u64,
    pub payload: Bytes,
}

/// A bounded, sequence-numbered message history.
#[derive(Debug)]
pub struct RingBuffer {
    messages: VecDeque<StoredMessage>,
    /// Sequence number of `messages[0]`, or of the next message when empty.
    first_seq: u64,
    bytes: usize,
    /// Timestamp of the newest evicted message, 0 when nothing has been evicted.
    last_evicted_timestamp: u64,
}

impl Default for RingBuffer {
    fn default() -> Self {
        RingBuffer::new()
    }
}

impl RingBuffer {
    /// Creates an empty ring buffer whose first message will get sequence number 1.
    pub fn new() -> Self {
        RingBuffer {
            messages: VecDeque::new(),
            first_seq: 1,
            bytes: 0,
            last_evicted_timestamp: 0,
        }
    }

    /// Returns the sequence number of the oldest retained message; when the buffer is
    /// empty, the sequence number the next message will get.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Returns the sequence number the next appended message gets.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.messages.len() as u64
    }

    /// Returns the number of retained messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Returns true when no message is retained.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Returns the sum of retained payload sizes, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Returns the timestamp of the newest evicted message, or 0 if none was evicted.
    pub fn last_evicted_timestamp(&self) -> u64 {
        self.last_evicted_timestamp
    }

    /// Appends a message, evicts by count and bytes, and returns its sequence number.
    pub fn push(&mut self, message: StoredMessage, retention: &Retention) -> u64 {
        let seq = self.next_seq();
        self.bytes += message.payload.len();
        self.messages.push_back(message);
        while self.messages.len() > 1
            && (self.messages.len() > retention.max_messages || self.bytes > retention.max_bytes)
        {
            self.pop_front();
        }
        seq
    }

    /// Evicts messages whose timestamp is older than `now - max_age`, where `now` is in
    /// nanoseconds since the Unix epoch. Returns how many were evicted.
    pub fn evict_expired(&mut self, now: u64, max_age: Duration) -> usize {
        let cutoff = now.saturating_sub(max_age.as_nanos().min(u64::MAX as u128) as u64);
        let mut evicted = 0;
        while let Some(front) = self.messages.front() {
            if front.timestamp >= cutoff {
                break;
            }
            self.pop_front();
            evicted += 1;
        }
        evicted
    }

    /// Returns the message with sequence number `seq`, if retained.
    pub fn get(&self, seq: u64) -> Option<&StoredMessage> {
        let index = seq.checked_sub(self.first_seq)?;
        self.messages.get(usize::try_from(index).ok()?)
    }

    /// Returns the sequence number of the first retained message with a timestamp at or
    /// after `timestamp`, or `next_seq()` when there is none.
    pub fn seq_at_or_after(&self, timestamp: u64) -> u64 {
        let index = self.messages.partition_point(|m| m.timestamp < timestamp);
        self.first_seq + index as u64
    }

    fn pop_front(&mut self) {
        if let Some(message) = self.messages.pop_front() {
            self.bytes -= message.payload.len();
            self.first_seq += 1;
            self.last_evicted_timestamp = message.timestamp;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn retention(max_messages: usize, max_bytes: usize) -> Retention {
        Retention {
            max_messages,
            max_bytes,
            max_age: Duration::from_secs(3600),
        }
    }

    fn message(timestamp: u64, size: usize) -> StoredMessage {
        StoredMessage {
            timestamp,
            payload: Bytes::from(vec![0u8; size]),
        }
    }

    #[test]
    fn evicts_by_count() {
        let mut ring = RingBuffer::new();
        let limits = retention(3, usize::MAX);
        for i in 0..5 {
            assert_eq!(ring.push(message(i, 1), &limits), i + 1);
        }
        assert_eq!(ring.first_seq(), 3);
        assert_eq!(ring.next_seq(), 6);
        assert!(ring.get(2).is_none());
        assert_eq!(ring.get(3).unwrap().timestamp, 2);
    }

    #[test]
    fn evicts_by_bytes_but_keeps_newest() {
        let mut ring = RingBuffer::new();
        let limits = retention(100, 10);
        ring.push(message(1, 4), &limits);
        ring.push(message(2, 4), &limits);
        ring.push(message(3, 4), &limits);
        assert_eq!(ring.first_seq(), 2);
        assert_eq!(ring.bytes(), 8);
        ring.push(message(4, 50), &limits);
        assert_eq!(ring.len(), 1);
        assert_eq!(ring.first_seq(), 4);
        assert_eq!(ring.bytes(), 50);
    }

    #[test]
    fn evicts_by_age() {
        let mut ring = RingBuffer::new();
        let limits = retention(100, usize::MAX);
        for ts in [100, 200, 300] {
            ring.push(message(ts, 1), &limits);
        }
        assert_eq!(ring.evict_expired(350, Duration::from_nanos(100)), 2);
        assert_eq!(ring.first_seq(), 3);
        assert_eq!(ring.last_evicted_timestamp(), 200);
    }

    #[test]
    fn finds_by_time() {
        let mut ring = RingBuffer::new();
        let limits = retention(100, usize::MAX);
        for ts in [10, 20, 20, 30] {
            ring.push(message(ts, 1), &limits);
        }
        assert_eq!(ring.seq_at_or_after(0), 1);
        assert_eq!(ring.seq_at_or_after(20), 2);
        assert_eq!(ring.seq_at_or_after(21), 4);
        assert_eq!(ring.seq_at_or_after(31), 5);
    }

    proptest! {
        #[test]
        fn limits_hold_after_every_push(
            sizes in proptest::collection::vec(0usize..64, 1..200),
            max_messages in 1usize..20,
            max_bytes in 0usize..256,
        ) {
            let mut ring = RingBuffer::new();
            let limits = retention(max_messages, max_bytes);
            for (i, size) in sizes.iter().enumerate() {
                let seq = ring.push(message(i as u64, *size), &limits);
                prop_assert_eq!(seq, i as u64 + 1);
                prop_assert!(!ring.is_empty());
                prop_assert!(ring.len() <= max_messages);
                prop_assert!(ring.len() == 1 || ring.bytes() <= max_bytes);
                prop_assert_eq!(ring.next_seq(), seq + 1);
                // The retained messages are exactly the newest ones.
                let expected_bytes: usize = sizes[i + 1 - ring.len()..=i].iter().sum();
                prop_assert_eq!(ring.bytes(), expected_bytes);
                prop_assert_eq!(ring.get(seq).map(|m| m.timestamp), Some(i as u64));
            }
        }
    }
}
