//! Exact accounting of the messages one subscriber receives: a bitmap per
//! (topic, publisher) stream marks every counter seen, so a second arrival is a
//! duplicate and a counter never seen by the end is lost.

use super::header::Header;

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The first arrival of a message this subscriber should get.
    New,
    /// A message that arrived before.
    Duplicate,
    /// A message of a stream this subscriber does not read, or with a malformed header.
    Unexpected,
}

/// Totals of one or more subscribers after a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accounting {
    /// Deliveries the subscribers should have received.
    pub expected: u64,
    /// Expected deliveries that arrived at least once.
    pub received: u64,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Arrivals of a message already received.
    pub duplicated: u64,
    /// Arrivals that belong to no expected stream, or name a counter never sent.
    pub unexpected: u64,
}

impl Accounting {
    /// Adds another subscriber's totals.
    pub fn add(&mut self, other: &Accounting) {
        self.expected += other.expected;
        self.received += other.received;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.unexpected += other.unexpected;
    }
}

#[derive(Debug, Default)]
struct Stream {
    seen: Vec<u64>,
}

impl Stream {
    /// Marks `counter` as seen; returns false when it was seen before.
    fn mark(&mut self, counter: u32) -> bool {
        let word = counter as usize / 64;
        let bit = 1u64 << (counter % 64);
        if word >= self.seen.len() {
            let len = (word + 1).max(self.seen.len() * 2);
            self.seen.resize(len, 0);
        }
        let fresh = self.seen[word] & bit == 0;
        self.seen[word] |= bit;
        fresh
    }

    /// Returns how many counters below `limit` were seen, and how many at or above it.
    fn count_split(&self, limit: u64) -> (u64, u64) {
        let mut below = 0u64;
        let mut above = 0u64;
        for (index, &word) in self.seen.iter().enumerate() {
            let first = index as u64 * 64;
            if first + 64 <= limit {
                below += u64::from(word.count_ones());
            } else if first >= limit {
                above += u64::from(word.count_ones());
            } else {
                let mask = (1u64 << (limit - first)) - 1;
                below += u64::from((word & mask).count_ones());
                above += u64::from((word & !mask).count_ones());
            }
        }
        (below, above)
    }
}

/// One subscriber's record of what it received.
#[derive(Debug)]
pub struct Tracker {
    publishers: usize,
    /// Indexed by `topic * publishers + publisher`; `None` for streams not read here.
    streams: Vec<Option<Stream>>,
    duplicated: u64,
    unexpected: u64,
}

impl Tracker {
    /// Creates a tracker for a subscriber of `subscribed` topics, where
    /// `publisher_topics[p]` lists the topics publisher `p` writes to.
    pub fn new(topics: usize, subscribed: &[usize], publisher_topics: &[Vec<usize>]) -> Tracker {
        let publishers = publisher_topics.len();
        let mut streams: Vec<Option<Stream>> = (0..topics * publishers).map(|_| None).collect();
        for &topic in subscribed {
            for (publisher, written) in publisher_topics.iter().enumerate() {
                if written.contains(&topic) {
                    streams[topic * publishers + publisher] = Some(Stream::default());
                }
            }
        }
        Tracker {
            publishers,
            streams,
            duplicated: 0,
            unexpected: 0,
        }
    }

    /// Records one arrival.
    pub fn record(&mut self, header: &Header) -> Arrival {
        let publisher = header.publisher as usize;
        let index = header.topic as usize * self.publishers + publisher;
        let stream = match self.streams.get_mut(index) {
            Some(Some(stream)) if publisher < self.publishers => stream,
            _ => {
                self.unexpected += 1;
                return Arrival::Unexpected;
            }
        };
        if stream.mark(header.counter) {
            Arrival::New
        } else {
            self.duplicated += 1;
            Arrival::Duplicate
        }
    }

    /// Counts an arrival whose payload had no valid header.
    pub fn record_malformed(&mut self) {
        self.unexpected += 1;
    }

    /// Settles the account once every publisher has finished; `sent[p][t]` is the number
    /// of messages publisher `p` sent to topic `t`.
    pub fn settle(&self, sent: &[Vec<u64>]) -> Accounting {
        let mut accounting = Accounting {
            duplicated: self.duplicated,
            unexpected: self.unexpected,
            ..Accounting::default()
        };
        for (index, stream) in self.streams.iter().enumerate() {
            let Some(stream) = stream else {
                continue;
            };
            let topic = index / self.publishers;
            let publisher = index % self.publishers;
            let expected = sent
                .get(publisher)
                .and_then(|topics| topics.get(topic))
                .copied()
                .unwrap_or(0);
            let (received, beyond) = stream.count_split(expected);
            accounting.expected += expected;
            accounting.received += received;
            accounting.lost += expected - received;
            accounting.unexpected += beyond;
        }
        accounting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(topic: u16, publisher: u16, counter: u32) -> Header {
        Header {
            intended_ns: 0,
            counter,
            publisher,
            topic,
        }
    }

    #[test]
    fn counts_new_duplicate_and_lost() {
        let publisher_topics = vec![vec![0, 1]];
        let mut tracker = Tracker::new(2, &[1], &publisher_topics);
        assert_eq!(tracker.record(&header(1, 0, 0)), Arrival::New);
        assert_eq!(tracker.record(&header(1, 0, 2)), Arrival::New);
        assert_eq!(tracker.record(&header(1, 0, 2)), Arrival::Duplicate);
        assert_eq!(tracker.record(&header(0, 0, 0)), Arrival::Unexpected);
        let sent = vec![vec![10, 4]];
        let accounting = tracker.settle(&sent);
        assert_eq!(accounting.expected, 4);
        assert_eq!(accounting.received, 2);
        assert_eq!(accounting.lost, 2);
        assert_eq!(accounting.duplicated, 1);
        assert_eq!(accounting.unexpected, 1);
    }

    #[test]
    fn counter_beyond_sent_is_unexpected() {
        let mut tracker = Tracker::new(1, &[0], &[vec![0]]);
        for counter in 0..130 {
            tracker.record(&header(0, 0, counter));
        }
        let accounting = tracker.settle(&[vec![100]]);
        assert_eq!(accounting.received, 100);
        assert_eq!(accounting.lost, 0);
        assert_eq!(accounting.unexpected, 30);
    }

    #[test]
    fn unknown_publisher_is_unexpected() {
        let mut tracker = Tracker::new(1, &[0], &[vec![0]]);
        assert_eq!(tracker.record(&header(0, 7, 0)), Arrival::Unexpected);
        assert_eq!(tracker.record(&header(9, 0, 0)), Arrival::Unexpected);
    }

    #[test]
    fn large_counters_grow_the_bitmap() {
        let mut tracker = Tracker::new(1, &[0], &[vec![0]]);
        assert_eq!(tracker.record(&header(0, 0, 1_000_000)), Arrival::New);
        assert_eq!(tracker.record(&header(0, 0, 1_000_000)), Arrival::Duplicate);
        let accounting = tracker.settle(&[vec![1_000_001]]);
        assert_eq!(accounting.received, 1);
        assert_eq!(accounting.lost, 1_000_000);
    }
}
