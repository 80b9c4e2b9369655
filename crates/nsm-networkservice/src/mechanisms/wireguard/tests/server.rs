//! The server alone (its answer, payload gating), and failing reservations on both sides.

use super::*;

#[tokio::test]
async fn the_server_always_answers_with_its_current_key() {
    let ends = FakeEnds::new();
    for stale in [String::new(), key(9)] {
        let mut req = offered("s");
        req.connection
            .as_mut()
            .unwrap()
            .mechanism
            .as_mut()
            .unwrap()
            .set_param("dst_public_key", stale);
        let conn = chain(vec![server(&ends)])
            .run_request(&mut ctx(), req)
            .await
            .unwrap();
        let m = conn.mechanism.unwrap();
        assert_eq!(m.param("dst_public_key"), Some(key(0x41).as_str()));
        assert_eq!(m.param("dst_port"), Some("40001"));
    }
    assert_eq!(ends.len(), 1);
}

#[tokio::test]
async fn failing_to_reserve_is_an_error_on_both_sides() {
    let ends = FakeEnds::new();
    ends.fail.store(true, Ordering::SeqCst);
    let probe = Probe::ok();
    let err = chain(vec![client(&ends), probe.clone()])
        .run_request(&mut ctx(), with_payload("c", payload::IP))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert!(probe.seen.lock().is_empty(), "nothing was sent on");

    let err = chain(vec![server(&ends), probe.clone()])
        .run_request(&mut ctx(), offered("s"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    let seen = probe.seen.lock().clone();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1].close,
        "the server closed what it had requested downstream"
    );
}

#[tokio::test]
async fn ethernet_payload_passes_the_server_untouched() {
    let ends = FakeEnds::new();
    let mut req = offered("s");
    req.connection.as_mut().unwrap().payload = payload::ETHERNET.into();
    let conn = chain(vec![server(&ends)])
        .run_request(&mut ctx(), req.clone())
        .await
        .unwrap();
    assert_eq!(Some(conn), req.connection);
    assert_eq!(ends.len(), 0);
}
