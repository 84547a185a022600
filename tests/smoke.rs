mod common;

use common::*;
use pubsub::client::SubscribeOptions;
use std::time::Duration;

#[test]
fn publish_reaches_subscriber_across_shards() {
    let server = start_broker(2, |_| {});
    let mut sub = connect(&server);
    let mut publisher = connect(&server);
    for shard in 0..2 {
        let topic = topic_on_shard(shard, 2, 0);
        let subscription = sub.subscribe(&topic, SubscribeOptions::default()).unwrap();
        let published = publisher.publish_confirmed(&topic, b"hello").unwrap();
        assert_eq!(published.seq, 1);
        let (messages, others) = receive_messages(&mut sub, 1, Duration::from_secs(5));
        assert!(others.is_empty(), "{others:?}");
        assert_eq!(payloads(&messages), vec!["hello"]);
        assert_eq!(messages[0].sub_id, subscription.sub_id);
    }
    server.shutdown().unwrap();
}
