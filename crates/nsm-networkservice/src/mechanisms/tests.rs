use std::sync::Arc;

use nsm_api::mechanisms::{MechanismType, cls};
use tonic::Code;

use super::*;
use crate::discover::testing::{Probe, chain, ctx, request};

fn mechanism(t: MechanismType) -> Mechanism {
    t.mechanism()
}

fn map(entries: Vec<(MechanismType, Element)>) -> BTreeMap<String, Element> {
    entries
        .into_iter()
        .map(|(t, e)| (t.as_str().to_string(), e))
        .collect()
}

#[tokio::test]
async fn server_selects_the_first_preference_that_succeeds() {
    let memif = Probe::failing(|_| Some(NsmError::unavailable("memif", "no socket")));
    let kernel = Probe::ok();
    let server = MechanismsServer::new(map(vec![
        (MechanismType::Memif, memif.clone()),
        (MechanismType::Kernel, kernel.clone()),
    ]));
    let mut req = request("c1", "svc", &[]);
    req.mechanism_preferences = vec![
        mechanism(MechanismType::Vfio),
        mechanism(MechanismType::Memif),
        mechanism(MechanismType::Kernel),
    ];
    let conn = chain(vec![Arc::new(server)])
        .run_request(&mut ctx(), req)
        .await
        .unwrap();
    assert_eq!(conn.mechanism.unwrap().r#type, "KERNEL");
    assert_eq!(memif.seen.lock().len(), 1);
    assert_eq!(
        kernel.last().conn().mechanism.unwrap().cls,
        cls::LOCAL,
        "the element sees the preference selected"
    );
}

#[tokio::test]
async fn client_offers_preferences_without_selecting_one() {
    let kernel = Probe::ok();
    let client = MechanismsClient::new(map(vec![(MechanismType::Kernel, kernel.clone())]));
    let mut req = request("c1", "svc", &[]);
    req.mechanism_preferences = vec![mechanism(MechanismType::Kernel)];
    chain(vec![Arc::new(client)])
        .run_request(&mut ctx(), req)
        .await
        .unwrap();
    assert!(kernel.last().conn().mechanism.is_none());
}

#[tokio::test]
async fn every_failed_preference_is_listed() {
    let memif = Probe::failing(|_| Some(NsmError::unavailable("memif", "no socket")));
    let server = MechanismsServer::new(map(vec![(MechanismType::Memif, memif)]));
    let mut req = request("c1", "svc", &[]);
    req.mechanism_preferences = vec![
        mechanism(MechanismType::Kernel),
        mechanism(MechanismType::Memif),
    ];
    let err = chain(vec![Arc::new(server)])
        .run_request(&mut ctx(), req)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("LOCAL/KERNEL (mechanisms: invalid argument: mechanism \"KERNEL\" not supported, supported: MEMIF)"), "{msg}");
    assert!(
        msg.contains("LOCAL/MEMIF (memif: unavailable: no socket)"),
        "{msg}"
    );
}

#[tokio::test]
async fn unsupported_selected_mechanism_is_invalid_argument() {
    let server = MechanismsServer::new(map(vec![(MechanismType::Kernel, Probe::ok())]));
    let mut req = request("c1", "svc", &[]);
    req.connection.as_mut().unwrap().mechanism = Some(Mechanism {
        cls: "REMOTE".into(),
        r#type: "IPSEC".into(),
        ..Default::default()
    });
    let err = chain(vec![Arc::new(server)])
        .run_request(&mut ctx(), req.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.to_string()
            .contains("mechanism \"IPSEC\" not supported, supported: KERNEL"),
        "{err}"
    );
    let err = chain(vec![Arc::new(MechanismsServer::new(BTreeMap::new()))])
        .run_close(&mut ctx(), req.connection.unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn only_unsupported_preferences_is_invalid_argument() {
    let server = MechanismsServer::new(map(vec![(MechanismType::Kernel, Probe::ok())]));
    let mut req = request("c1", "svc", &[]);
    req.mechanism_preferences = vec![mechanism(MechanismType::Vxlan)];
    let err = chain(vec![Arc::new(server)])
        .run_request(&mut ctx(), req)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn selected_mechanism_and_close_dispatch_by_type() {
    let kernel = Probe::ok();
    let memif = Probe::ok();
    let server = Arc::new(MechanismsServer::new(map(vec![
        (MechanismType::Kernel, kernel.clone()),
        (MechanismType::Memif, memif.clone()),
    ])));
    let mut req = request("c1", "svc", &[]);
    req.connection.as_mut().unwrap().mechanism = Some(mechanism(MechanismType::Memif));
    req.mechanism_preferences = vec![mechanism(MechanismType::Kernel)];
    let c = chain(vec![server]);
    let conn = c.run_request(&mut ctx(), req).await.unwrap();
    c.run_close(&mut ctx(), conn).await.unwrap();
    assert_eq!(memif.seen.lock().len(), 2);
    assert!(memif.last().close);
    assert!(kernel.seen.lock().is_empty());
}
