//! Hostile input never panics the wire layer or the URL parsers, and whatever they accept survives a
//! print/parse (encode/decode) round trip unchanged.
//!
//! Messages get two kinds of input: raw arbitrary bytes, and well-formed protobuf field sequences (random
//! field numbers, wire types and nested messages), so that a good share of the inputs actually decode and
//! the round-trip property is exercised, not just the error paths.

// clippy.toml allows unwrap/expect in tests, but clippy does not count helper functions of an
// integration-test crate as tests; panicking is how these helpers fail a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Debug;

use nsm_api::url::{NetworkServiceUrl, NsmUrl};
use nsm_api::{connection, connectioncontext, networkservice, registry};
use proptest::prelude::*;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

/// Decodes `bytes` as `M`; if that succeeds, the value must encode, decode back equal, and encode to the
/// same bytes again (our encoding is deterministic: maps are BTreeMaps).
fn round_trips<M: Message + Default + PartialEq + Debug>(
    name: &str,
    bytes: &[u8],
) -> Result<bool, TestCaseError> {
    let Ok(first) = M::decode(bytes) else {
        return Ok(false);
    };
    let encoded = first.encode_to_vec();
    let second = M::decode(encoded.as_slice())
        .map_err(|e| TestCaseError::fail(format!("{name}: re-decoding our own encoding: {e}")))?;
    prop_assert_eq!(&second, &first, "{}: decode(encode(m)) != m", name);
    prop_assert_eq!(
        second.encode_to_vec(),
        encoded,
        "{}: encoding is not deterministic",
        name
    );
    Ok(true)
}

/// Runs `round_trips` for every generated message type; each entry also names the proto message it covers
/// so `every_message_type_is_covered` can hold the list against the descriptor set.
macro_rules! all_messages {
    (names: $( $ty:ty => $name:literal ),+ $(,)?) => {
        [$( $name ),+]
    };
    ($bytes:ident, $( $ty:ty => $name:literal ),+ $(,)?) => {{
        let mut decoded = 0usize;
        $( decoded += usize::from(round_trips::<$ty>($name, $bytes)?); )+
        Ok::<usize, TestCaseError>(decoded)
    }};
}

macro_rules! with_message_list {
    ($mac:ident ! ( $($prefix:tt)* )) => {
        $mac!(
            $($prefix)*
            connection::Connection => "connection.Connection",
            connection::ConnectionEvent => "connection.ConnectionEvent",
            connection::Mechanism => "connection.Mechanism",
            connection::MonitorScopeSelector => "connection.MonitorScopeSelector",
            connection::PathSegment => "connection.PathSegment",
            connection::Path => "connection.Path",
            connectioncontext::IpNeighbor => "connectioncontext.IpNeighbor",
            connectioncontext::Route => "connectioncontext.Route",
            connectioncontext::IpFamily => "connectioncontext.IpFamily",
            connectioncontext::ExtraPrefixRequest => "connectioncontext.ExtraPrefixRequest",
            connectioncontext::IpContext => "connectioncontext.IPContext",
            connectioncontext::DnsConfig => "connectioncontext.DNSConfig",
            connectioncontext::DnsContext => "connectioncontext.DNSContext",
            connectioncontext::EthernetContext => "connectioncontext.EthernetContext",
            connectioncontext::ConnectionContext => "connectioncontext.ConnectionContext",
            networkservice::NetworkServiceRequest => "networkservice.NetworkServiceRequest",
            registry::NetworkService => "registry.NetworkService",
            registry::Match => "registry.Match",
            registry::Metadata => "registry.Metadata",
            registry::Destination => "registry.Destination",
            registry::NetworkServiceLabels => "registry.NetworkServiceLabels",
            registry::NetworkServiceEndpoint => "registry.NetworkServiceEndpoint",
            registry::NetworkServiceQuery => "registry.NetworkServiceQuery",
            registry::NetworkServiceEndpointQuery => "registry.NetworkServiceEndpointQuery",
            registry::NetworkServiceResponse => "registry.NetworkServiceResponse",
            registry::NetworkServiceEndpointResponse => "registry.NetworkServiceEndpointResponse",
        )
    };
}

fn decode_all(bytes: &[u8]) -> Result<usize, TestCaseError> {
    with_message_list!(all_messages!(bytes,))
}

#[test]
fn every_message_type_is_covered() {
    use prost_types::FileDescriptorSet;
    let fds = FileDescriptorSet::decode(nsm_api::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let mut in_descriptor: Vec<String> = fds
        .file
        .iter()
        .filter(|f| !f.package().starts_with("google."))
        .flat_map(|f| {
            f.message_type
                .iter()
                .map(move |m| format!("{}.{}", f.package(), m.name()))
        })
        .collect();
    in_descriptor.sort();
    let mut covered: Vec<String> = with_message_list!(all_messages!(names:))
        .iter()
        .map(|s| s.to_string())
        .collect();
    covered.sort();
    assert_eq!(
        covered, in_descriptor,
        "messages fuzzed vs messages defined"
    );
}

/// A field number: mostly the small ones our messages use, sometimes any valid number.
fn field_number() -> impl Strategy<Value = u32> {
    prop_oneof![9 => 1u32..=12, 1 => 1u32..=536_870_911]
}

fn key(number: u32, wire: WireType) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(number, wire, &mut out);
    out
}

fn length_delimited(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = key(number, WireType::LengthDelimited);
    encode_varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

/// One well-formed encoded field; length-delimited payloads are text, raw bytes or nested fields.
fn encoded_field() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        (field_number(), any::<u64>()).prop_map(|(n, v)| {
            let mut out = key(n, WireType::Varint);
            encode_varint(v, &mut out);
            out
        }),
        (field_number(), 0u64..4).prop_map(|(n, v)| {
            let mut out = key(n, WireType::Varint);
            encode_varint(v, &mut out);
            out
        }),
        (field_number(), ".{0,12}").prop_map(|(n, s)| length_delimited(n, s.as_bytes())),
        (field_number(), prop::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(n, b)| length_delimited(n, &b)),
        (field_number(), any::<u64>()).prop_map(|(n, v)| {
            let mut out = key(n, WireType::SixtyFourBit);
            out.extend_from_slice(&v.to_le_bytes());
            out
        }),
        (field_number(), any::<u32>()).prop_map(|(n, v)| {
            let mut out = key(n, WireType::ThirtyTwoBit);
            out.extend_from_slice(&v.to_le_bytes());
            out
        }),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        (field_number(), prop::collection::vec(inner, 0..6))
            .prop_map(|(n, fields)| length_delimited(n, &fields.concat()))
    })
}

fn message_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        prop::collection::vec(encoded_field(), 0..8).prop_map(|f| f.concat()),
    ]
}

proptest! {
    #[test]
    fn decoding_any_bytes_never_panics_and_round_trips(bytes in message_bytes()) {
        decode_all(&bytes)?;
    }
}

/// A sanity check on the generator itself: the round-trip property above is vacuous if nothing decodes.
#[test]
fn structured_inputs_do_decode() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = prop::collection::vec(encoded_field(), 1..8).prop_map(|f| f.concat());
    let mut decoded = 0;
    for _ in 0..200 {
        let bytes = strategy.new_tree(&mut runner).expect("value").current();
        decoded += decode_all(&bytes).expect("round trip");
    }
    // 200 inputs x 26 message types; well over a few percent must decode.
    assert!(decoded > 200, "only {decoded} successful decodes");
}

/// Pieces URLs are made of, so that generated strings get past the scheme check and hit every branch.
fn url_ish() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just("kernel://".to_string()),
        Just("memif://".to_string()),
        Just("vfio://".to_string()),
        Just("noop://".to_string()),
        Just("vxlan://".to_string()),
        Just("tcp://".to_string()),
        Just("unix://".to_string()),
        Just("inode://".to_string()),
        Just("file://".to_string()),
        Just("@".to_string()),
        Just("/".to_string()),
        Just("?".to_string()),
        Just("=".to_string()),
        Just("&".to_string()),
        Just("%".to_string()),
        Just(":".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("+".to_string()),
        Just("#".to_string()),
        Just(",".to_string()),
        Just("%2F".to_string()),
        Just("%C3".to_string()),
        Just("%zz".to_string()),
        "%(3D|26|3F|23|25|2B|20|2F|40|E2%82%AC)",
        Just("::1".to_string()),
        Just("é".to_string()),
        Just(" ".to_string()),
        "[a-zA-Z0-9._-]{1,8}",
        "[0-9]{1,6}",
    ];
    prop::collection::vec(fragment, 0..12).prop_map(|f| f.concat())
}

/// A label key or value: arbitrary text, or text full of characters that must be escaped when printed.
fn label_part() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^&]{0,6}",
        "(%(3D|26|3F|23|25|2B|20|2F|40|E2%82%AC|C3|25[0-9A-F]{2})|[a-f0-9=?+ #,/@%]){0,5}",
    ]
}

/// Request URLs shaped like the real thing, with arbitrary text in each part.
fn request_url_shaped() -> impl Strategy<Value = String> {
    (
        "(kernel|memif|vfio|noop|KERNEL|vxlan)",
        "[a-z0-9._-]{0,10}",
        proptest::option::of("[a-z0-9.]{0,8}"),
        proptest::option::of("[^/?]{0,17}"),
        prop::collection::vec((label_part(), label_part()), 0..4),
    )
        .prop_map(|(scheme, svc, dom, ifname, labels)| {
            let mut s = format!("{scheme}://{svc}");
            if let Some(d) = dom {
                s += &format!("@{d}");
            }
            if let Some(i) = ifname {
                s += &format!("/{i}");
            }
            for (n, (k, v)) in labels.iter().enumerate() {
                s += &format!("{}{k}={v}", if n == 0 { '?' } else { '&' });
            }
            s
        })
}

fn url_input() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), url_ish(), request_url_shaped()]
}

proptest! {
    #[test]
    fn socket_urls_never_panic_and_print_reparseably(s in url_input()) {
        if let Ok(url) = NsmUrl::parse(&s) {
            let printed = url.to_string();
            prop_assert_eq!(
                NsmUrl::parse(&printed),
                Ok(url.clone()),
                "{:?} parsed as {:?}, printed as {:?}", s, url, printed
            );
        }
    }

    #[test]
    fn request_urls_never_panic_and_print_reparseably(s in url_input()) {
        if let Ok(url) = NetworkServiceUrl::parse(&s) {
            let printed = url.to_string();
            let reparsed = NetworkServiceUrl::parse(&printed);
            prop_assert_eq!(
                &reparsed,
                &Ok(url.clone()),
                "{:?} parsed as {:?}, printed as {:?}", s, url, printed
            );
            // Canonical form: printing the reparsed value gives the same text.
            prop_assert_eq!(reparsed.map(|u| u.to_string()), Ok(printed));
        }
    }
}
