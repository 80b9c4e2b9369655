//! Our compiled `.proto` files are, item by item, the NSM v1.1.1 wire contract.
//!
//! The contract below is transcribed from the reference notes (`nsm-control-plane.md` §1.1–1.2, themselves
//! read from networkservicemesh/api@v1.1.1) in the same notation: `name=number:type`. The test decodes
//! `nsm_api::FILE_DESCRIPTOR_SET` and reports every missing, extra or different file, message, field,
//! enum value, service and method by name — a renamed field, a changed number or a dropped `stream` is a
//! silent interop break with Go peers that no Rust-to-Rust test would see.

// clippy.toml allows unwrap/expect in tests, but clippy does not count helper functions of an
// integration-test crate as tests; panicking is how these helpers fail a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet};

const GO_NETWORKSERVICE: &str = "github.com/networkservicemesh/api/pkg/api/networkservice";
const GO_REGISTRY: &str = "github.com/networkservicemesh/api/pkg/api/registry";

/// §1.1: file name (as imported), proto package, go_package, imports.
const FILES: [(&str, &str, &str, &[&str]); 4] = [
    (
        "connection.proto",
        "connection",
        GO_NETWORKSERVICE,
        &["google/protobuf/timestamp.proto", "connectioncontext.proto"],
    ),
    (
        "connectioncontext.proto",
        "connectioncontext",
        GO_NETWORKSERVICE,
        &[],
    ),
    (
        "networkservice.proto",
        "networkservice",
        GO_NETWORKSERVICE,
        &["connection.proto", "google/protobuf/empty.proto"],
    ),
    (
        "registry.proto",
        "registry",
        GO_REGISTRY,
        &[
            "google/protobuf/empty.proto",
            "google/protobuf/timestamp.proto",
        ],
    ),
];

/// §1.1: every gRPC method: path, request, response, kind.
const METHODS: [(&str, &str, &str, &str); 9] = [
    (
        "/networkservice.NetworkService/Request",
        "networkservice.NetworkServiceRequest",
        "connection.Connection",
        "unary",
    ),
    (
        "/networkservice.NetworkService/Close",
        "connection.Connection",
        "google.protobuf.Empty",
        "unary",
    ),
    (
        "/connection.MonitorConnection/MonitorConnections",
        "connection.MonitorScopeSelector",
        "connection.ConnectionEvent",
        "server-streaming",
    ),
    (
        "/registry.NetworkServiceRegistry/Register",
        "registry.NetworkService",
        "registry.NetworkService",
        "unary",
    ),
    (
        "/registry.NetworkServiceRegistry/Find",
        "registry.NetworkServiceQuery",
        "registry.NetworkServiceResponse",
        "server-streaming",
    ),
    (
        "/registry.NetworkServiceRegistry/Unregister",
        "registry.NetworkService",
        "google.protobuf.Empty",
        "unary",
    ),
    (
        "/registry.NetworkServiceEndpointRegistry/Register",
        "registry.NetworkServiceEndpoint",
        "registry.NetworkServiceEndpoint",
        "unary",
    ),
    (
        "/registry.NetworkServiceEndpointRegistry/Find",
        "registry.NetworkServiceEndpointQuery",
        "registry.NetworkServiceEndpointResponse",
        "server-streaming",
    ),
    (
        "/registry.NetworkServiceEndpointRegistry/Unregister",
        "registry.NetworkServiceEndpoint",
        "google.protobuf.Empty",
        "unary",
    ),
];

/// §1.2: every message and its fields. Unqualified type names are in the message's own package.
const MESSAGES: &[(&str, &[&str])] = &[
    // package connection
    (
        "connection.Mechanism",
        &[
            "cls=1:string",
            "type=2:string",
            "parameters=3:map<string,string>",
        ],
    ),
    (
        "connection.PathSegment",
        &[
            "name=1:string",
            "id=2:string",
            "token=3:string",
            "expires=4:google.protobuf.Timestamp",
            "metrics=5:map<string,string>",
        ],
    ),
    (
        "connection.Path",
        &["index=1:uint32", "path_segments=2:repeated PathSegment"],
    ),
    (
        "connection.Connection",
        &[
            "id=1:string",
            "network_service=2:string",
            "mechanism=3:Mechanism",
            "context=4:connectioncontext.ConnectionContext",
            "labels=5:map<string,string>",
            "path=6:Path",
            "network_service_endpoint_name=7:string",
            "payload=8:string",
            "state=9:State",
        ],
    ),
    (
        "connection.ConnectionEvent",
        &[
            "type=1:ConnectionEventType",
            "connections=2:map<string,Connection>",
        ],
    ),
    (
        "connection.MonitorScopeSelector",
        &["path_segments=1:repeated PathSegment"],
    ),
    // package connectioncontext
    (
        "connectioncontext.IpNeighbor",
        &["ip=1:string", "hardware_address=2:string"],
    ),
    (
        "connectioncontext.Route",
        &["prefix=1:string", "nextHop=2:string"],
    ),
    ("connectioncontext.IpFamily", &["family=1:IpFamily.Family"]),
    (
        "connectioncontext.ExtraPrefixRequest",
        &[
            "addr_family=1:IpFamily",
            "prefix_len=2:uint32",
            "required_number=3:uint32",
            "requested_number=4:uint32",
        ],
    ),
    (
        "connectioncontext.IPContext",
        &[
            "src_ip_addrs=1:repeated string",
            "dst_ip_addrs=2:repeated string",
            "src_ip_required=3:bool",
            "dst_ip_required=4:bool",
            "src_routes=5:repeated Route",
            "dst_routes=6:repeated Route",
            "excluded_prefixes=7:repeated string",
            "ip_neighbors=8:repeated IpNeighbor",
            "extra_prefix_request=9:repeated ExtraPrefixRequest",
            "extra_prefixes=10:repeated string",
        ],
    ),
    (
        "connectioncontext.DNSConfig",
        &[
            "dns_server_ips=1:repeated string",
            "search_domains=2:repeated string",
        ],
    ),
    (
        "connectioncontext.DNSContext",
        &["configs=1:repeated DNSConfig"],
    ),
    (
        "connectioncontext.EthernetContext",
        &["src_mac=1:string", "dst_mac=2:string", "vlan_tag=3:int32"],
    ),
    (
        "connectioncontext.ConnectionContext",
        &[
            "ip_context=1:IPContext",
            "dns_context=2:DNSContext",
            "ethernet_context=3:EthernetContext",
            "extra_context=4:map<string,string>",
            "MTU=5:uint32",
        ],
    ),
    // package networkservice
    (
        "networkservice.NetworkServiceRequest",
        &[
            "connection=1:connection.Connection",
            "mechanism_preferences=2:repeated connection.Mechanism",
        ],
    ),
    // package registry
    (
        "registry.NetworkService",
        &[
            "name=1:string",
            "payload=2:string",
            "matches=3:repeated Match",
        ],
    ),
    (
        "registry.Match",
        &[
            "source_selector=1:map<string,string>",
            "routes=2:repeated Destination",
            "fallthrough=3:bool",
            "metadata=4:Metadata",
        ],
    ),
    ("registry.Metadata", &["labels=1:map<string,string>"]),
    (
        "registry.Destination",
        &[
            "destination_selector=1:map<string,string>",
            "weight=2:uint32",
        ],
    ),
    (
        "registry.NetworkServiceLabels",
        &["labels=1:map<string,string>"],
    ),
    (
        "registry.NetworkServiceEndpoint",
        &[
            "name=1:string",
            "network_service_names=2:repeated string",
            "network_service_labels=3:map<string,NetworkServiceLabels>",
            "url=4:string",
            "expiration_time=5:google.protobuf.Timestamp",
            "initial_registration_time=6:google.protobuf.Timestamp",
        ],
    ),
    (
        "registry.NetworkServiceQuery",
        &["network_service=1:NetworkService", "watch=2:bool"],
    ),
    (
        "registry.NetworkServiceEndpointQuery",
        &[
            "network_service_endpoint=1:NetworkServiceEndpoint",
            "watch=2:bool",
        ],
    ),
    (
        "registry.NetworkServiceResponse",
        &["network_service=1:NetworkService", "deleted=2:bool"],
    ),
    (
        "registry.NetworkServiceEndpointResponse",
        &[
            "network_service_endpoint=1:NetworkServiceEndpoint",
            "deleted=2:bool",
        ],
    ),
];

/// §1.2: every enum (nested ones by their full name) and its values.
const ENUMS: &[(&str, &[&str])] = &[
    ("connection.State", &["UP=0", "DOWN=1"]),
    (
        "connection.ConnectionEventType",
        &["INITIAL_STATE_TRANSFER=0", "UPDATE=1", "DELETE=2"],
    ),
    ("connectioncontext.IpFamily.Family", &["IPV4=0", "IPV6=1"]),
];

const SCALARS: [&str; 15] = [
    "double", "float", "int64", "uint64", "int32", "fixed64", "fixed32", "bool", "string", "bytes",
    "uint32", "sfixed32", "sfixed64", "sint32", "sint64",
];

// === the contract, canonicalised ===

/// Qualifies a type name written in the contract: scalars stay, `pkg.Name` (lower-case first segment)
/// stays, anything else is relative to `package`.
fn qualify(package: &str, ty: &str) -> String {
    if let Some(inner) = ty.strip_prefix("map<").and_then(|t| t.strip_suffix('>')) {
        let (k, v) = inner.split_once(',').expect("map<K,V>");
        return format!("map<{},{}>", qualify(package, k), qualify(package, v));
    }
    if let Some(elem) = ty.strip_prefix("repeated ") {
        return format!("repeated {}", qualify(package, elem));
    }
    if SCALARS.contains(&ty)
        || ty
            .split('.')
            .next()
            .is_some_and(|p| p.starts_with(char::is_lowercase))
            && ty.contains('.')
    {
        return ty.to_string();
    }
    format!("{package}.{ty}")
}

/// Expected fields of one message: field name -> "number:type", types fully qualified.
fn expected_fields(message: &str, fields: &[&str]) -> BTreeMap<String, String> {
    let package = message.split('.').next().expect("package");
    fields
        .iter()
        .map(|f| {
            let (name, rest) = f.split_once('=').expect("name=number:type");
            let (number, ty) = rest.split_once(':').expect("number:type");
            (
                name.to_string(),
                format!("{number}:{}", qualify(package, ty)),
            )
        })
        .collect()
}

// === the descriptor, rendered in the same notation ===

/// Every message of the set (nested ones too) by full name without the leading dot.
fn index_messages(fds: &FileDescriptorSet) -> BTreeMap<String, &DescriptorProto> {
    fn walk<'a>(
        prefix: &str,
        msgs: &'a [DescriptorProto],
        out: &mut BTreeMap<String, &'a DescriptorProto>,
    ) {
        for m in msgs {
            let full = format!("{prefix}.{}", m.name());
            walk(&full, &m.nested_type, out);
            out.insert(full, m);
        }
    }
    let mut out = BTreeMap::new();
    for f in &fds.file {
        walk(f.package(), &f.message_type, &mut out);
    }
    out
}

fn is_map_entry(m: &DescriptorProto) -> bool {
    m.options.as_ref().is_some_and(|o| o.map_entry())
}

fn scalar_name(t: Type) -> Option<&'static str> {
    Some(match t {
        Type::Double => "double",
        Type::Float => "float",
        Type::Int64 => "int64",
        Type::Uint64 => "uint64",
        Type::Int32 => "int32",
        Type::Fixed64 => "fixed64",
        Type::Fixed32 => "fixed32",
        Type::Bool => "bool",
        Type::String => "string",
        Type::Bytes => "bytes",
        Type::Uint32 => "uint32",
        Type::Sfixed32 => "sfixed32",
        Type::Sfixed64 => "sfixed64",
        Type::Sint32 => "sint32",
        Type::Sint64 => "sint64",
        Type::Group | Type::Message | Type::Enum => return None,
    })
}

/// A field's type: scalar name, full message/enum name, or `map<K,V>` for a map entry message.
fn render_type(f: &FieldDescriptorProto, index: &BTreeMap<String, &DescriptorProto>) -> String {
    if let Some(s) = scalar_name(f.r#type()) {
        return s.to_string();
    }
    let name = f.type_name().trim_start_matches('.').to_string();
    if f.r#type() == Type::Group {
        return format!("group {name}");
    }
    match index.get(&name) {
        Some(entry) if f.r#type() == Type::Message && is_map_entry(entry) => {
            let part = |n: i32| {
                entry
                    .field
                    .iter()
                    .find(|kv| kv.number() == n)
                    .map_or_else(|| "?".to_string(), |kv| render_type(kv, index))
            };
            format!("map<{},{}>", part(1), part(2))
        }
        _ => name,
    }
}

/// "number:type" with `repeated `/`optional `/`required ` as the contract writes them.
fn render_field(f: &FieldDescriptorProto, index: &BTreeMap<String, &DescriptorProto>) -> String {
    let ty = render_type(f, index);
    let label = match f.label() {
        Label::Repeated if !ty.starts_with("map<") => "repeated ",
        Label::Required => "required ",
        _ if f.proto3_optional() => "optional ",
        _ => "",
    };
    let oneof = match (f.oneof_index, f.proto3_optional()) {
        (Some(i), false) => format!(" (in oneof #{i})"),
        _ => String::new(),
    };
    format!("{}:{label}{ty}{oneof}", f.number())
}

/// protoc's default JSON name: drop underscores, upper-case the letter after each.
fn default_json_name(field: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Compares two name -> description maps, naming (`{what}{name}`) every missing, extra and different entry.
fn diff(
    what: &str,
    expected: &BTreeMap<String, String>,
    actual: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) {
    for (name, want) in expected {
        match actual.get(name) {
            None => problems.push(format!("{what}{name}: missing (contract: {want})")),
            Some(got) if got != want => {
                problems.push(format!("{what}{name}: contract {want}, ours {got}"))
            }
            Some(_) => {}
        }
    }
    for (name, got) in actual {
        if !expected.contains_key(name) {
            problems.push(format!("{what}{name}: not in the contract (ours: {got})"));
        }
    }
}

fn decode_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(nsm_api::FILE_DESCRIPTOR_SET).expect("FILE_DESCRIPTOR_SET decodes")
}

fn nsm_files(fds: &FileDescriptorSet) -> Vec<&FileDescriptorProto> {
    fds.file
        .iter()
        .filter(|f| !f.name().starts_with("google/protobuf/"))
        .collect()
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what} differ from the NSM v1.1.1 contract:\n  {}",
        problems.join("\n  ")
    );
}

// === the checks: each returns every difference, by name ===

fn check_files(fds: &FileDescriptorSet) -> Vec<String> {
    let mut expected = BTreeMap::new();
    let mut actual = BTreeMap::new();
    let mut wanted_imports = BTreeSet::new();
    for (name, package, go_package, imports) in FILES {
        let mut imports = imports.to_vec();
        imports.sort();
        wanted_imports.extend(imports.iter().copied());
        expected.insert(
            name.to_string(),
            format!("proto3 package {package}, go_package {go_package:?}, imports {imports:?}"),
        );
    }
    for f in nsm_files(fds) {
        let mut imports: Vec<&str> = f.dependency.iter().map(String::as_str).collect();
        imports.sort();
        let go_package = f
            .options
            .as_ref()
            .map(|o| o.go_package())
            .unwrap_or_default();
        actual.insert(
            f.name().to_string(),
            format!(
                "{} package {}, go_package {go_package:?}, imports {imports:?}",
                f.syntax(),
                f.package()
            ),
        );
    }
    let mut problems = Vec::new();
    diff("file ", &expected, &actual, &mut problems);
    // The only other files are the well-known types our files import.
    for f in &fds.file {
        if f.name().starts_with("google/protobuf/") && !wanted_imports.contains(f.name()) {
            problems.push(format!(
                "file {}: imported but not in the contract",
                f.name()
            ));
        }
    }
    problems
}

fn check_messages(fds: &FileDescriptorSet) -> Vec<String> {
    let index = index_messages(fds);
    let mut problems = Vec::new();

    let expected_messages: BTreeMap<String, String> = MESSAGES
        .iter()
        .map(|(name, fields)| (name.to_string(), format!("{} fields", fields.len())))
        .collect();
    let mut actual_messages = BTreeMap::new();
    for f in nsm_files(fds) {
        for m in &f.message_type {
            let full = format!("{}.{}", f.package(), m.name());
            actual_messages.insert(full, format!("{} fields", m.field.len()));
        }
    }
    diff(
        "message ",
        &expected_messages,
        &actual_messages,
        &mut problems,
    );

    for (message, fields) in MESSAGES {
        let Some(desc) = index.get(*message) else {
            continue; // reported above
        };
        let actual: BTreeMap<String, String> = desc
            .field
            .iter()
            .map(|f| (f.name().to_string(), render_field(f, &index)))
            .collect();
        let what = format!("field {message}.");
        diff(
            &what,
            &expected_fields(message, fields),
            &actual,
            &mut problems,
        );
        check_message_shape(message, desc, &mut problems);
    }
    problems
}

/// JSON names as protoc derives them; no nested messages but map entries; no oneofs.
fn check_message_shape(message: &str, desc: &DescriptorProto, problems: &mut Vec<String>) {
    for f in &desc.field {
        let want = default_json_name(f.name());
        if f.json_name.as_ref().is_some_and(|j| *j != want) {
            problems.push(format!(
                "field {message}.{}: JSON name {:?}, protoc gives {want:?}",
                f.name(),
                f.json_name()
            ));
        }
    }
    for nested in &desc.nested_type {
        let full = format!(".{message}.{}", nested.name());
        let used_as_map = desc
            .field
            .iter()
            .any(|f| f.type_name() == full && f.label() == Label::Repeated);
        if !is_map_entry(nested) || !used_as_map {
            problems.push(format!(
                "message {message}.{}: nested message not in the contract",
                nested.name()
            ));
        }
    }
    if !desc.oneof_decl.is_empty() {
        problems.push(format!(
            "message {message}: has oneofs; the contract has none"
        ));
    }
}

fn check_enums(fds: &FileDescriptorSet) -> Vec<String> {
    let index = index_messages(fds);
    let expected: BTreeMap<String, String> = ENUMS
        .iter()
        .map(|(name, values)| (name.to_string(), values.join(", ")))
        .collect();
    let render = |values: &[prost_types::EnumValueDescriptorProto]| {
        values
            .iter()
            .map(|v| format!("{}={}", v.name(), v.number()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut actual = BTreeMap::new();
    for f in nsm_files(fds) {
        for e in &f.enum_type {
            actual.insert(format!("{}.{}", f.package(), e.name()), render(&e.value));
        }
    }
    for (name, m) in &index {
        if !name.starts_with("google.") {
            for e in &m.enum_type {
                actual.insert(format!("{name}.{}", e.name()), render(&e.value));
            }
        }
    }
    let mut problems = Vec::new();
    diff("enum ", &expected, &actual, &mut problems);
    problems
}

fn check_services(fds: &FileDescriptorSet) -> Vec<String> {
    let kind = |client: bool, server: bool| match (client, server) {
        (false, false) => "unary",
        (false, true) => "server-streaming",
        (true, false) => "client-streaming",
        (true, true) => "bidi-streaming",
    };
    let expected: BTreeMap<String, String> = METHODS
        .iter()
        .map(|(path, req, resp, kind)| (path.to_string(), format!("{req} -> {resp} ({kind})")))
        .collect();
    let mut actual = BTreeMap::new();
    for f in nsm_files(fds) {
        for s in &f.service {
            for m in &s.method {
                let path = format!("/{}.{}/{}", f.package(), s.name(), m.name());
                let io = format!(
                    "{} -> {} ({})",
                    m.input_type().trim_start_matches('.'),
                    m.output_type().trim_start_matches('.'),
                    kind(m.client_streaming(), m.server_streaming())
                );
                actual.insert(path, io);
            }
        }
    }
    let mut problems = Vec::new();
    diff("method ", &expected, &actual, &mut problems);
    problems
}

// === the tests ===

#[test]
fn files_packages_and_go_packages_match() {
    assert_no_problems("files", &check_files(&decode_set()));
}

#[test]
fn messages_and_fields_match() {
    assert_no_problems("messages", &check_messages(&decode_set()));
}

#[test]
fn enums_and_values_match() {
    assert_no_problems("enums", &check_enums(&decode_set()));
}

#[test]
fn services_and_methods_match() {
    assert_no_problems("services", &check_services(&decode_set()));
}

#[test]
fn the_hand_written_method_list_agrees_with_the_contract() {
    let ours: BTreeMap<&str, bool> = nsm_api::services::METHODS.into_iter().collect();
    let contract: BTreeMap<&str, bool> = METHODS
        .iter()
        .map(|(p, _, _, k)| (*p, *k == "server-streaming"))
        .collect();
    assert_eq!(ours, contract, "nsm_api::services::METHODS");
}

fn file_mut<'a>(fds: &'a mut FileDescriptorSet, name: &str) -> &'a mut FileDescriptorProto {
    fds.file.iter_mut().find(|f| f.name() == name).expect(name)
}

fn message_mut<'a>(f: &'a mut FileDescriptorProto, name: &str) -> &'a mut DescriptorProto {
    f.message_type
        .iter_mut()
        .find(|m| m.name() == name)
        .expect(name)
}

fn assert_reported(problems: &[String], expected: &[&str]) {
    let text = problems.join("\n");
    for needle in expected {
        assert!(
            text.contains(needle),
            "not reported: {needle}\nreported:\n{text}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "reported:\n{text}");
}

/// The checks themselves catch drift: each kind of change is reported, naming the item.
#[test]
fn each_kind_of_drift_is_reported_by_name() {
    let mut fds = decode_set();
    let conn = file_mut(&mut fds, "connection.proto");
    message_mut(conn, "Connection").field[8].number = Some(10); // state = 10
    message_mut(conn, "Path").field[1].set_label(Label::Optional); // path_segments not repeated
    let renamed = &mut message_mut(conn, "Mechanism").field[1]; // type -> kind
    renamed.name = Some("kind".to_string());
    renamed.json_name = Some("kind".to_string());
    conn.enum_type[1].value[1].number = Some(2); // State.DOWN = 2
    let reg = file_mut(&mut fds, "registry.proto");
    let entry = &mut message_mut(reg, "NetworkServiceEndpoint").nested_type[0];
    entry.field[1].set_type(Type::String); // map<string,NetworkServiceLabels> -> map<string,string>
    entry.field[1].type_name = None;
    reg.message_type
        .retain(|m| m.name() != "NetworkServiceEndpointResponse");
    let find = reg.service[0]
        .method
        .iter_mut()
        .find(|m| m.name() == "Find")
        .expect("Find");
    find.server_streaming = Some(false);
    reg.options.as_mut().expect("options").go_package =
        Some("github.com/networkservicemesh/api/pkg/api/networkservice".to_string());
    let cc = file_mut(&mut fds, "connectioncontext.proto");
    message_mut(cc, "IpFamily").enum_type[0].value.pop(); // no IPV6

    assert_reported(
        &check_messages(&fds),
        &[
            "message registry.NetworkServiceEndpointResponse: missing (contract: 2 fields)",
            "field connection.Connection.state: contract 9:connection.State, ours 10:connection.State",
            "field connection.Path.path_segments: contract 2:repeated connection.PathSegment, ours 2:connection.PathSegment",
            "field connection.Mechanism.type: missing",
            "field connection.Mechanism.kind: not in the contract",
            "field registry.NetworkServiceEndpoint.network_service_labels: contract 3:map<string,registry.NetworkServiceLabels>, ours 3:map<string,string>",
        ],
    );
    assert_reported(
        &check_enums(&fds),
        &[
            "enum connection.State: contract UP=0, DOWN=1, ours UP=0, DOWN=2",
            "enum connectioncontext.IpFamily.Family: contract IPV4=0, IPV6=1, ours IPV4=0",
        ],
    );
    assert_reported(
        &check_services(&fds),
        &[
            "method /registry.NetworkServiceEndpointRegistry/Find: contract registry.NetworkServiceEndpointQuery -> registry.NetworkServiceEndpointResponse (server-streaming), ours registry.NetworkServiceEndpointQuery -> registry.NetworkServiceEndpointResponse (unary)",
        ],
    );
    assert_reported(
        &check_files(&fds),
        &[
            "file registry.proto: contract proto3 package registry, go_package \"github.com/networkservicemesh/api/pkg/api/registry\"",
        ],
    );
}
