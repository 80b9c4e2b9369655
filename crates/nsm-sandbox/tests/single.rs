//! Single-node use cases ported from the Go sdk's `chains/nsmgr/single_test.go`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use nsm_api::connectioncontext::DnsConfig;
use nsm_api::registry::{Destination, Match, Metadata, NetworkService, NetworkServiceEndpoint};
use nsm_networkservice::dnscontext::{DnsContextClient, DnsContextServer};
use nsm_sandbox::{EndpointSpec, Sandbox};

use common::*;

/// Go `Test_DNSUsecase`: the endpoint hands out two DNS configs for one domain; the client's
/// dnscontext writes a Corefile that fans out to both servers.
#[tokio::test]
async fn dns_configs_reach_the_clients_corefile() {
    let sb = Sandbox::builder().build().await.unwrap();
    register_service(&sb, "my-service").await;
    let dns = |ip: &str| DnsConfig {
        dns_server_ips: vec![ip.into()],
        search_domains: vec!["my.domain1".into()],
    };
    sb.nodes[0]
        .new_endpoint(
            EndpointSpec::new("final-endpoint", "my-service"),
            vec![Arc::new(DnsContextServer::new(vec![
                dns("8.8.8.8"),
                dns("8.8.4.4"),
            ]))],
        )
        .await
        .unwrap();
    // Removed on drop, also when the test fails.
    let tmp = tempfile::Builder::new()
        .prefix("nsm-sandbox-dns-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("resolv.conf"),
        "nameserver 8.8.4.4\nsearch example.com\n",
    )
    .unwrap();
    let dns_client = Arc::new(DnsContextClient::new(dir));
    let nsc = sb.nodes[0].new_client("nsc", vec![dns_client.clone()]);
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), request("1", "my-service"))
        .await
        .unwrap();
    const EXPECTED: &str =
        ". {\n\tlog\n\treload\n}\nmy.domain1 {\n\tfanout . 8.8.4.4 8.8.8.8\n\tcache\n\tlog\n}\n";
    let corefile = dns_client.corefile_path();
    eventually("the Corefile", Duration::from_secs(1), || {
        std::fs::read_to_string(&corefile).is_ok_and(|s| s == EXPECTED)
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(dns_client.resolv_conf_path()).unwrap(),
        "nameserver 127.0.0.1\nnameserver 8.8.4.4\nsearch example.com\n"
    );
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    // Without the connection only the default block is left.
    assert_eq!(
        std::fs::read_to_string(&corefile).unwrap(),
        ". {\n\tlog\n\treload\n}\n"
    );
    sb.nodes[0].shutdown("final-endpoint").await.unwrap();
    assert_clean(&sb).await;
}

/// Go `Test_ShouldParseNetworkServiceLabelsTemplate`: a destination selector `{{.nodeName}}` is
/// resolved from the labels the NSMgr adds (nodeName), which it also adds to the registration.
#[tokio::test]
async fn destination_selector_templates_use_the_node_name() {
    let sb = Sandbox::builder().nodes(2).build().await.unwrap();
    sb.register_ns(NetworkService {
        name: "my-service".into(),
        payload: "IP".into(),
        matches: vec![Match {
            routes: vec![Destination {
                destination_selector: [("nodeName".to_string(), "{{.nodeName}}".to_string())]
                    .into(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
    .await
    .unwrap();
    // One endpoint per node: the template must pick the client's node's one.
    for node in &sb.nodes {
        node.new_endpoint(
            EndpointSpec::new(&format!("nse-{}", node.name), "my-service"),
            vec![],
        )
        .await
        .unwrap();
    }
    for node in &sb.nodes {
        let nsc = node.new_client("nsc", vec![]);
        let conn = nsc
            .request(&mut sb.ctx(TIMEOUT), request("1", "my-service"))
            .await
            .unwrap();
        let want: BTreeMap<String, String> = [("nodeName".to_string(), node.name.clone())].into();
        assert_eq!(conn.labels, want, "connection labels");
        assert_eq!(
            conn.network_service_endpoint_name,
            format!("nse-{}", node.name)
        );
        nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();

        let found = sb
            .nse_registry()
            .find_all(
                &mut sb.ctx(TIMEOUT),
                NetworkServiceEndpoint {
                    name: format!("nse-{}", node.name),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let reg = found
            .iter()
            .map(|f| &f.item)
            .find(|n| n.name == format!("nse-{}", node.name))
            .expect("registered");
        assert_eq!(
            reg.network_service_labels["my-service"].labels, want,
            "registration labels"
        );
    }
    assert_clean(&sb).await;
}

/// Go `Test_UsecasePoint2MultiPoint`: the service's match metadata selects the forwarder by its
/// labels; without metadata labels the default `p2p=true` applies.
#[tokio::test]
async fn match_metadata_selects_the_forwarder() {
    let sb = Sandbox::builder()
        .default_forwarders(false)
        .registry_expiry(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    for (name, label) in [
        ("p2mp forwarder", "p2mp"),
        ("p2p forwarder", "p2p"),
        ("special forwarder", "special"),
    ] {
        sb.nodes[0]
            .new_forwarder(name, [(label.to_string(), "true".to_string())].into())
            .await
            .unwrap();
    }
    let ns = |labels: &[(&str, &str)]| NetworkService {
        name: "my-ns".into(),
        matches: vec![Match {
            routes: vec![Destination::default()],
            metadata: Some(Metadata {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    sb.register_ns(ns(&[("p2mp", "true")])).await.unwrap();
    sb.nodes[0]
        .new_endpoint(EndpointSpec::new("my-nse-1", "my-ns"), vec![])
        .await
        .unwrap();
    let nsc = sb.nodes[0].new_client("nsc", vec![]);
    let req = request("1", "my-ns");
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), req.clone())
        .await
        .unwrap();
    assert_eq!(names(&conn).len(), 4);
    assert_eq!(names(&conn)[2], "p2mp forwarder");

    sb.register_ns(ns(&[])).await.unwrap();
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    let conn = nsc
        .request(&mut sb.ctx(TIMEOUT), req.clone())
        .await
        .unwrap();
    assert_eq!(names(&conn).len(), 4);
    assert_eq!(names(&conn)[2], "p2p forwarder");
    nsc.close(&mut sb.ctx(TIMEOUT), conn).await.unwrap();
    assert_clean(&sb).await;
}
