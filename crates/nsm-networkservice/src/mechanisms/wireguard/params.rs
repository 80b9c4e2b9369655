//! Parsing and validation of the far side's WIREGUARD parameters. Every failure is an
//! `InvalidArgument` that names the parameter, so a user can tell which forwarder sent what.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nsm_api::mechanisms::{TunnelEnd, wireguard};
use nsm_api::{Connection, Mechanism};
use nsm_core::{NsmError, Result};

use super::NAME;
use crate::mechanisms::mtu::min_pod_mtu;

/// Length of a public key in NSM's text form: base64 of 32 bytes.
const KEY_TEXT_LEN: usize = 44;

/// Checks NSM's text form of a WireGuard public key: standard (not URL-safe) base64 with padding of
/// exactly 32 bytes. The error says what is wrong, without the parameter name.
pub fn check_public_key(text: &str) -> std::result::Result<(), String> {
    if text.is_empty() {
        return Err("is empty".into());
    }
    if text.len() != KEY_TEXT_LEN {
        return Err(format!(
            "has {} characters; a key is {KEY_TEXT_LEN} (standard base64 of 32 bytes)",
            text.len()
        ));
    }
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| format!("is not standard base64 ({e})"))?;
    if bytes.len() != 32 {
        return Err(format!("decodes to {} bytes; a key has 32", bytes.len()));
    }
    Ok(())
}

fn invalid(key: &str, text: Option<&str>, what: impl std::fmt::Display) -> NsmError {
    match text {
        Some(t) => NsmError::invalid(NAME, format!("WIREGUARD parameter {key} = {t:?} {what}")),
        None => NsmError::invalid(NAME, format!("WIREGUARD parameter {key} {what}")),
    }
}

/// The tunnel address of `end`, which must have the same family as our own `own` address.
pub(super) fn ip(m: &Mechanism, end: TunnelEnd, own: IpAddr) -> Result<IpAddr> {
    let key = end.ip_key();
    let text = m.tunnel_ip(end);
    let ip: IpAddr = text
        .ok_or_else(|| invalid(key, None, "is missing"))?
        .parse()
        .map_err(|_| invalid(key, text, "is not an IP address"))?;
    if ip.is_ipv4() != own.is_ipv4() {
        return Err(invalid(
            key,
            text,
            format_args!("is not of the same IP family as this forwarder's tunnel IP {own}"),
        ));
    }
    Ok(ip)
}

/// The tunnel port of `end`: decimal digits only, 1–65535.
pub(super) fn port(m: &Mechanism, end: TunnelEnd) -> Result<u16> {
    let key = end.port_key();
    let text = m.tunnel_port(end);
    let t = text.ok_or_else(|| invalid(key, None, "is missing"))?;
    match t.parse::<u16>() {
        Ok(p) if p != 0 && t.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(invalid(key, text, "is not a UDP port (1-65535)")),
    }
}

/// The public key text of `end`, checked.
pub(super) fn public_key(m: &Mechanism, end: TunnelEnd) -> Result<String> {
    let key = end.public_key_key();
    let text = m.param(key);
    let t = text.ok_or_else(|| {
        let present = m.parameters.contains_key(key);
        invalid(key, None, if present { "is empty" } else { "is missing" })
    })?;
    check_public_key(t).map_err(|why| invalid(key, text, why))?;
    Ok(t.to_string())
}

/// The `MTU` parameter, if present: decimal, and not below what the connection's pods accept.
pub(super) fn mtu(m: &Mechanism, conn: &Connection) -> Result<Option<u32>> {
    let key = wireguard::MTU;
    let Some(t) = m.param(key) else {
        return Ok(None);
    };
    let mtu: u32 = t
        .parse()
        .ok()
        .filter(|_| t.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| invalid(key, Some(t), "is not a number"))?;
    check_mtu(mtu, conn)?;
    Ok(Some(mtu))
}

/// Refuses a tunnel MTU the connection's pods cannot use (0 stands for "not set" and passes).
pub(super) fn check_mtu(mtu: u32, conn: &Connection) -> Result<()> {
    let min = min_pod_mtu(conn);
    if mtu != 0 && mtu < min {
        return Err(NsmError::invalid(
            NAME,
            format!(
                "WIREGUARD parameter {} = {mtu} is below {min}, the smallest MTU the pod addresses allow",
                wireguard::MTU
            ),
        ));
    }
    Ok(())
}
