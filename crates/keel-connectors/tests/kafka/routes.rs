//! `topic_field`: one sink, a topic per record, exactly once across a crash mid-publish.

use super::*;

/// Records name their topic in a field (`table`); one without it goes to the sink's
/// `topic`. An epoch's publish interrupted after part of it reached one of the topics is
/// finished by recovery: each topic ends with its records once.
#[test]
fn records_go_to_the_topic_their_field_names_exactly_once_across_a_crash() {
    let (orders, customers, rest) = (
        topic("route-orders", 2),
        topic("route-customers", 1),
        topic("route-rest", 1),
    );
    let staging = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = KafkaSinkConfig::new(brokers(), &rest, staging.path());
        c.topic_field = Some("table".into());
        c
    };
    let mut sink = KafkaSink::new("out", config()).unwrap();
    block_on(sink.recover(&recovery(None, None))).unwrap();
    let records: Vec<(Option<&str>, String)> = (0..30)
        .map(|i| {
            let v = match i % 3 {
                0 => format!(r#"{{"table":"{orders}","i":{i}}}"#),
                1 => format!(r#"{{"table":"{customers}","i":{i}}}"#),
                _ => format!(r#"{{"i":{i}}}"#),
            };
            (None, v)
        })
        .collect();
    let pre = staged(&mut sink, 1, &records);
    let parsed: KafkaPreCommit = serde_json::from_value(pre.clone()).unwrap();
    let mut routed: Vec<&str> = parsed.routes.iter().map(|r| r.topic.as_str()).collect();
    routed.sort_unstable();
    let mut want_routes = vec![orders.as_str(), customers.as_str(), rest.as_str()];
    want_routes.sort_unstable();
    assert_eq!(routed, want_routes);
    drop(sink);
    // the interrupted publish got the first half of the `orders` records out
    let prod = producer();
    for (seq, (_, v)) in records.iter().enumerate().filter(|(i, _)| i % 3 == 0 && *i < 15) {
        let p = choose_partition(Partitioner::Murmur2, None, seq as u64, 2);
        send_as_sink(&prod, &orders, p, None, v, &format!("1/{seq}"));
    }
    prod.flush(Duration::from_secs(30)).unwrap();
    let mut again = KafkaSink::new("out", config()).unwrap();
    let r = block_on(again.recover(&recovery(Some(1), Some(pre)))).unwrap();
    assert_eq!(r.committed, 1);
    let count = |t: &str, n: i32, tag: &str| {
        let mut v: Vec<String> = read_all(t, n).into_iter().map(|r| r.value).collect();
        v.sort();
        let before = v.len();
        v.dedup();
        assert_eq!(v.len(), before, "{tag}: a record twice");
        v.len()
    };
    assert_eq!(count(&orders, 2, "orders"), 10);
    assert_eq!(count(&customers, 1, "customers"), 10);
    assert_eq!(count(&rest, 1, "rest"), 10, "records without the field go to `topic`");
}
