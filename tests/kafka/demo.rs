//! `churnsignal demo`: the real service path on the in-process mock cluster.

use churnsignal::demo::{run, Options};

#[test]
fn the_demo_runs_the_service_on_a_mock_cluster_and_sums_up_what_it_found() {
    let opts = Options {
        customers: 120,
        days: 150,
        speed: 400.0,
        seed: 9,
        listen: None,
    };
    let mut out = Vec::new();
    let s = run(&opts, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(s.events > 10_000, "{} events", s.events);
    assert_eq!(
        s.dead_letters,
        s.events / 20_001,
        "the planted broken messages"
    );
    let opened = s.by_status.get("open").copied().unwrap_or(0);
    assert!(
        opened >= 5,
        "drifting customers are found: {:?}",
        s.by_status
    );
    assert!(
        s.by_signal.len() >= 4,
        "several kinds of drift: {:?}",
        s.by_signal
    );
    assert!(text.contains("OPEN") && text.contains("Summary"), "{text}");
    assert!(text.contains("Customers at risk at the end, by value tier"));
}
