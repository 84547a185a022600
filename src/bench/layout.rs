//! Which topics each publisher writes to and each subscriber reads, and so how many
//! deliveries each published message should produce.
//!
//! The rule is the same for publishers and subscribers: with at least as many topics as
//! connections, connection `i` takes every topic `t` with `t % connections == i`; with
//! fewer topics, connection `i` takes topic `i % topics`. Every topic then has at least
//! one publisher and one subscriber, and every connection at least one topic.

/// The topics of every publisher and subscriber of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub topics: usize,
    /// Topic indexes per publisher.
    pub publisher_topics: Vec<Vec<usize>>,
    /// Topic indexes per subscriber.
    pub subscriber_topics: Vec<Vec<usize>>,
    /// Subscribers per topic: the deliveries one message to that topic should produce.
    pub fanout: Vec<u64>,
}

impl Layout {
    /// Spreads `topics` over `publishers` and `subscribers`. With `every_subscriber_gets_all`
    /// (a relay, which does no topic routing) each subscriber receives every topic.
    pub fn new(
        publishers: usize,
        subscribers: usize,
        topics: usize,
        every_subscriber_gets_all: bool,
    ) -> Layout {
        let publisher_topics = (0..publishers)
            .map(|i| assign(i, publishers, topics))
            .collect();
        let subscriber_topics: Vec<Vec<usize>> = (0..subscribers)
            .map(|i| {
                if every_subscriber_gets_all {
                    (0..topics).collect()
                } else {
                    assign(i, subscribers, topics)
                }
            })
            .collect();
        let mut fanout = vec![0u64; topics];
        for subscribed in &subscriber_topics {
            for &topic in subscribed {
                fanout[topic] += 1;
            }
        }
        Layout {
            topics,
            publisher_topics,
            subscriber_topics,
            fanout,
        }
    }
}

fn assign(index: usize, connections: usize, topics: usize) -> Vec<usize> {
    if topics >= connections {
        (0..topics).filter(|t| t % connections == index).collect()
    } else {
        vec![index % topics]
    }
}

/// Returns the topic name of index `topic` in run `run_id`: `bench.RUN.TOPIC`, valid for
/// pubsub, NATS subjects and Redis channels alike.
pub fn topic_name(run_id: &str, topic: usize) -> String {
    format!("bench.{run_id}.{topic}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_to_one() {
        let layout = Layout::new(1, 1, 1, false);
        assert_eq!(layout.publisher_topics, vec![vec![0]]);
        assert_eq!(layout.subscriber_topics, vec![vec![0]]);
        assert_eq!(layout.fanout, vec![1]);
    }

    #[test]
    fn more_topics_than_connections_partitions() {
        let layout = Layout::new(2, 3, 7, false);
        assert_eq!(
            layout.publisher_topics,
            vec![vec![0, 2, 4, 6], vec![1, 3, 5]]
        );
        assert_eq!(
            layout.subscriber_topics,
            vec![vec![0, 3, 6], vec![1, 4], vec![2, 5]]
        );
        assert_eq!(layout.fanout, vec![1; 7]);
    }

    #[test]
    fn fewer_topics_than_subscribers_fans_out() {
        let layout = Layout::new(1, 5, 2, false);
        assert_eq!(layout.publisher_topics, vec![vec![0, 1]]);
        assert_eq!(
            layout.subscriber_topics,
            vec![vec![0], vec![1], vec![0], vec![1], vec![0]]
        );
        assert_eq!(layout.fanout, vec![3, 2]);
    }

    #[test]
    fn relay_subscribers_get_every_topic() {
        let layout = Layout::new(2, 2, 3, true);
        assert_eq!(layout.subscriber_topics, vec![vec![0, 1, 2], vec![0, 1, 2]]);
        assert_eq!(layout.fanout, vec![2, 2, 2]);
    }

    #[test]
    fn topic_names_are_valid_topics() {
        let name = topic_name("1f2e-3", 12);
        assert_eq!(name, "bench.1f2e-3.12");
        assert!(crate::topic::TopicName::try_from(name.as_str()).is_ok());
    }
}
