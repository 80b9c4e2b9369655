//! Every Go-produced wire vector decodes to its JSON `value` and re-encodes to exactly its `hex`.
//!
//! The JSON value is read through a reflection of our own descriptors (prost-reflect, protobuf JSON
//! mapping with original field names), turned into our generated type, and compared with the type decoded
//! from the Go bytes; the generated type is then encoded again and must give the Go bytes back.

// clippy.toml allows unwrap/expect in tests, but clippy does not count helper functions of an
// integration-test crate as tests; panicking is how these helpers fail a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use nsm_api::{connection, connectioncontext, networkservice, registry};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};

/// Splits an encoded message into its top-level fields (key + payload bytes each).
fn top_level_fields(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let start = bytes;
        let (_, wire) = decode_key(&mut bytes).expect("field key");
        match wire {
            WireType::Varint => {
                decode_varint(&mut bytes).expect("varint");
            }
            WireType::LengthDelimited => {
                let len = decode_varint(&mut bytes).expect("length") as usize;
                bytes = &bytes[len..];
            }
            WireType::SixtyFourBit => bytes = &bytes[8..],
            WireType::ThirtyTwoBit => bytes = &bytes[4..],
            other => panic!("unexpected wire type {other:?}"),
        }
        out.push(start[..start.len() - bytes.len()].to_vec());
    }
    out
}

fn check<M: Message + Default + PartialEq + std::fmt::Debug>(
    pool: &DescriptorPool,
    name: &str,
    message: &str,
    hex_bytes: &[u8],
    value: &serde_json::Value,
) -> bool {
    let desc = pool
        .get_message_by_name(message)
        .unwrap_or_else(|| panic!("{name}: no descriptor for {message}"));
    let dynamic = DynamicMessage::deserialize(desc, value)
        .unwrap_or_else(|e| panic!("{name}: JSON value does not fit {message}: {e}"));
    let from_json = M::decode(dynamic.encode_to_vec().as_slice()).expect("re-decode");
    let from_go = M::decode(hex_bytes).unwrap_or_else(|e| panic!("{name}: decoding Go bytes: {e}"));
    assert_eq!(
        from_go, from_json,
        "{name}: decoded bytes differ from the JSON value"
    );
    let ours = from_go.encode_to_vec();
    if ours == hex_bytes {
        return true;
    }
    // Go's gRPC codec marshals maps in Go's random map iteration order, so a Go peer may send map
    // entries in any order. We always encode them sorted by key (BTreeMap). Accept the Go bytes only if
    // they are exactly our bytes with top-level map entries permuted — and report it to the caller.
    let mut a = top_level_fields(&ours);
    let mut b = top_level_fields(hex_bytes);
    assert_ne!(
        a, b,
        "{name}: same fields in the same order but different bytes?"
    );
    a.sort();
    b.sort();
    assert_eq!(
        a, b,
        "{name}: re-encoding is not byte-identical, and not a permutation of map entries either"
    );
    false
}

#[test]
fn all_wire_vectors_round_trip_byte_for_byte() {
    let pool = DescriptorPool::decode(nsm_api::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wire-vectors");
    let mut seen = 0;
    let mut reordered = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("vector dir")
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read vector");
        let v: serde_json::Value = serde_json::from_str(&text).expect("vector JSON");
        let name = v["name"].as_str().unwrap_or_default().to_string();
        let message = v["message"].as_str().expect("message").to_string();
        let bytes = hex::decode(v["hex"].as_str().expect("hex")).expect("hex digits");
        let value = &v["value"];
        let exact = match message.as_str() {
            "connection.Connection" => {
                check::<connection::Connection>(&pool, &name, &message, &bytes, value)
            }
            "connection.ConnectionEvent" => {
                check::<connection::ConnectionEvent>(&pool, &name, &message, &bytes, value)
            }
            "connection.Mechanism" => {
                check::<connection::Mechanism>(&pool, &name, &message, &bytes, value)
            }
            "connection.MonitorScopeSelector" => {
                check::<connection::MonitorScopeSelector>(&pool, &name, &message, &bytes, value)
            }
            "connectioncontext.IPContext" => {
                check::<connectioncontext::IpContext>(&pool, &name, &message, &bytes, value)
            }
            "networkservice.NetworkServiceRequest" => {
                check::<networkservice::NetworkServiceRequest>(
                    &pool, &name, &message, &bytes, value,
                )
            }
            "registry.NetworkServiceEndpointQuery" => {
                check::<registry::NetworkServiceEndpointQuery>(
                    &pool, &name, &message, &bytes, value,
                )
            }
            "registry.NetworkServiceEndpointResponse" => {
                check::<registry::NetworkServiceEndpointResponse>(
                    &pool, &name, &message, &bytes, value,
                )
            }
            "registry.NetworkServiceEndpoint" => {
                check::<registry::NetworkServiceEndpoint>(&pool, &name, &message, &bytes, value)
            }
            "registry.NetworkServiceQuery" => {
                check::<registry::NetworkServiceQuery>(&pool, &name, &message, &bytes, value)
            }
            "registry.NetworkServiceResponse" => {
                check::<registry::NetworkServiceResponse>(&pool, &name, &message, &bytes, value)
            }
            "registry.NetworkService" => {
                check::<registry::NetworkService>(&pool, &name, &message, &bytes, value)
            }
            other => panic!("{name}: vector for a message this test does not know: {other}"),
        };
        if !exact {
            reordered.push(name);
        }
        seen += 1;
    }
    assert_eq!(seen, 18, "every vector file was checked");
    // Exactly one vector carries a map whose entries Go wrote out of key order (see `check`).
    assert_eq!(reordered, ["registry.NetworkServiceEndpoint.full"]);
}
