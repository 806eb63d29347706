//! Go's net/rpc over HTTP on a unix socket, as the reference's plugin and daemon speak it:
//! the client sends `CONNECT /_goRPC_ HTTP/1.0`, the server answers `200 Connected to Go
//! RPC`, then each call is a gob `rpc.Request` {ServiceMethod, Seq} and the argument (the
//! plugin's skel.CmdArgs), each answer a gob `rpc.Response` {ServiceMethod, Seq, Error}
//! and the reply (a CNI 1.0 Result for `DHCP.Allocate`, an empty struct for `DHCP.Release`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use ipnetwork::IpNetwork;
use libcni::spec::{code, IpConfig, Route};
use libcni::{CniResult, Error};

use crate::gob::{self, Decoder, Encoder, Schema, Value};

const RPC_PATH: &str = "/_goRPC_";
const CONNECTED: &str = "200 Connected to Go RPC";
/// How long the daemon waits for the next bytes of a client.
const IDLE_CLIENT: Duration = Duration::from_secs(60);
/// The HTTP head of a CONNECT is a few lines; more is not a client of ours.
const MAX_HEAD: usize = 4096;

/// What the plugin passes the daemon: the reference's skel.CmdArgs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CmdArgs {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
    pub stdin: Vec<u8>,
}

impl CmdArgs {
    fn schema() -> Schema {
        Schema::Struct(
            "CmdArgs",
            vec![
                ("ContainerID", Schema::String),
                ("Netns", Schema::String),
                ("IfName", Schema::String),
                ("Args", Schema::String),
                ("Path", Schema::String),
                ("StdinData", Schema::Bytes),
            ],
        )
    }

    fn to_value(&self) -> Value {
        Value::Struct(vec![
            ("ContainerID".into(), Value::string(&self.container_id)),
            ("Netns".into(), Value::string(&self.netns)),
            ("IfName".into(), Value::string(&self.ifname)),
            ("Args".into(), Value::string(&self.args)),
            ("Path".into(), Value::string(&self.path)),
            ("StdinData".into(), Value::Bytes(self.stdin.clone())),
        ])
    }

    fn from_value(v: &Value) -> CmdArgs {
        CmdArgs {
            container_id: v.str("ContainerID"),
            netns: v.str("Netns"),
            ifname: v.str("IfName"),
            args: v.str("Args"),
            path: v.str("Path"),
            stdin: v.bytes("StdinData"),
        }
    }
}

fn request_schema() -> Schema {
    Schema::Struct(
        "Request",
        vec![("ServiceMethod", Schema::String), ("Seq", Schema::Uint)],
    )
}

fn response_schema() -> Schema {
    Schema::Struct(
        "Response",
        vec![
            ("ServiceMethod", Schema::String),
            ("Seq", Schema::Uint),
            ("Error", Schema::String),
        ],
    )
}

/// The parts of current.Result (types/100) the daemon fills: gob sends net.IP and
/// net.IPMask as their bytes.
fn result_schema() -> Schema {
    let ip = || Schema::Bytes;
    let ipnet = || Schema::Struct("IPNet", vec![("IP", ip()), ("Mask", Schema::Bytes)]);
    Schema::Struct(
        "Result",
        vec![
            ("CNIVersion", Schema::String),
            (
                "IPs",
                Schema::Slice(Box::new(Schema::Struct(
                    "IPConfig",
                    vec![("Address", ipnet()), ("Gateway", ip())],
                ))),
            ),
            (
                "Routes",
                Schema::Slice(Box::new(Schema::Struct(
                    "Route",
                    vec![
                        ("Dst", ipnet()),
                        ("GW", ip()),
                        ("Priority", Schema::Int),
                        ("Scope", Schema::Int),
                    ],
                ))),
            ),
        ],
    )
}

fn ipnet_value(n: &IpNetwork) -> Value {
    let mask = match n.mask() {
        IpAddr::V4(m) => m.octets().to_vec(),
        IpAddr::V6(m) => m.octets().to_vec(),
    };
    Value::Struct(vec![
        ("IP".into(), ip_value(Some(n.ip()))),
        ("Mask".into(), Value::Bytes(mask)),
    ])
}

fn ip_value(ip: Option<IpAddr>) -> Value {
    Value::Bytes(match ip {
        Some(IpAddr::V4(a)) => a.octets().to_vec(),
        Some(IpAddr::V6(a)) => a.octets().to_vec(),
        None => Vec::new(),
    })
}

fn result_value(r: &CniResult) -> Value {
    let ips = r
        .ips
        .iter()
        .map(|c| {
            Value::Struct(vec![
                ("Address".into(), ipnet_value(&c.address)),
                ("Gateway".into(), ip_value(c.gateway)),
            ])
        })
        .collect();
    let routes = r
        .routes
        .iter()
        .map(|rt| {
            Value::Struct(vec![
                ("Dst".into(), ipnet_value(&rt.dst)),
                ("GW".into(), ip_value(rt.gw)),
                (
                    "Priority".into(),
                    Value::Int(rt.priority.unwrap_or(0) as i64),
                ),
                ("Scope".into(), Value::Int(rt.scope.unwrap_or(0) as i64)),
            ])
        })
        .collect();
    Value::Struct(vec![
        ("CNIVersion".into(), Value::string("1.0.0")),
        ("IPs".into(), Value::Slice(ips)),
        ("Routes".into(), Value::Slice(routes)),
    ])
}

fn parse_ipnet(v: Option<&Value>) -> Option<IpNetwork> {
    let v = v?;
    let ip = parse_ip(v, "IP")?;
    let mask = v.bytes("Mask");
    let prefix = ipnetwork::ip_mask_to_prefix(match (ip, mask.len()) {
        (IpAddr::V4(_), 4) => IpAddr::from(<[u8; 4]>::try_from(&mask[..]).ok()?),
        (IpAddr::V4(_), 16) => IpAddr::from(<[u8; 4]>::try_from(&mask[12..]).ok()?),
        (IpAddr::V6(_), 16) => IpAddr::from(<[u8; 16]>::try_from(&mask[..]).ok()?),
        _ => return None,
    })
    .ok()?;
    IpNetwork::new(ip, prefix).ok()
}

/// A net.IP: 4 bytes, or 16 (an IPv4 address in its IPv6-mapped form comes back IPv4).
fn parse_ip(v: &Value, name: &str) -> Option<IpAddr> {
    let b = v.bytes(name);
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(&b[..]).ok()?)),
        16 => {
            let a = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&b[..]).ok()?);
            Some(a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(a)))
        }
        _ => None,
    }
}

/// Reads the Result a daemon (ours or the reference's) sent.
fn result_from_value(v: &Value) -> Result<CniResult, Error> {
    let bad = |what: &str| Error::new(code::INTERNAL, format!("the DHCP daemon sent a bad {what}"));
    let mut out = CniResult::default();
    for c in v.slice("IPs") {
        out.ips.push(IpConfig {
            version: None,
            address: parse_ipnet(c.field("Address")).ok_or_else(|| bad("address"))?,
            gateway: parse_ip(c, "Gateway"),
            interface: c.int("Interface").and_then(|i| usize::try_from(i).ok()),
        });
    }
    for r in v.slice("Routes") {
        let mut route = Route::new(
            parse_ipnet(r.field("Dst")).ok_or_else(|| bad("route"))?,
            parse_ip(r, "GW"),
        );
        route.priority = r
            .int("Priority")
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p != 0);
        route.scope = r.int("Scope").and_then(|p| u32::try_from(p).ok());
        out.routes.push(route);
    }
    Ok(out)
}

fn dial(e: impl std::fmt::Display) -> Error {
    Error::new(code::TRY_AGAIN, format!("error dialing DHCP daemon: {e}"))
}

fn io_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(code::IO, format!("{what}: {e}"))
}

/// The plugin side: one call to the daemon at `socket`, bounded by `wait`.
pub fn call(
    socket: &str,
    method: &str,
    args: &CmdArgs,
    wait: Duration,
) -> Result<Option<CniResult>, Error> {
    let stream = UnixStream::connect(socket).map_err(dial)?;
    stream.set_read_timeout(Some(wait)).map_err(dial)?;
    stream.set_write_timeout(Some(wait)).map_err(dial)?;
    let mut w = std::io::BufWriter::new(stream.try_clone().map_err(dial)?);
    w.write_all(format!("CONNECT {RPC_PATH} HTTP/1.0\n\n").as_bytes())
        .and_then(|_| w.flush())
        .map_err(dial)?;
    let mut r = BufReader::new(stream);
    let head = read_head(&mut r).map_err(dial)?;
    let status = head.first().map(String::as_str).unwrap_or("");
    if !status.ends_with(CONNECTED) {
        return Err(dial(format!("unexpected HTTP response: {status}")));
    }
    let calling = |e: gob::Error| io_error(&format!("error calling {method}"), e);
    let mut enc = Encoder::new(w);
    let req = Value::Struct(vec![
        ("ServiceMethod".into(), Value::string(method)),
        ("Seq".into(), Value::Uint(0)),
    ]);
    enc.encode(&request_schema(), &req).map_err(calling)?;
    enc.encode(&CmdArgs::schema(), &args.to_value())
        .map_err(calling)?;
    enc.flush().map_err(calling)?;
    let mut dec = Decoder::new(r);
    let resp = dec.decode().map_err(calling)?;
    let body = dec.decode().map_err(calling)?;
    let error = resp.str("Error");
    if !error.is_empty() {
        return Err(Error::new(
            code::TRY_AGAIN,
            format!("error calling {method}: {error}"),
        ));
    }
    if method == "DHCP.Release" {
        return Ok(None);
    }
    result_from_value(&body).map(Some)
}

/// Reads an HTTP head up to its empty line: its lines, without line ends.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let n = r
            .by_ref()
            .take((MAX_HEAD - total) as u64 + 1)
            .read_until(b'\n', &mut line)?;
        total += n;
        if total == 0 {
            // Closed before a word: someone checking that the socket answers.
            return Ok(lines);
        }
        if n == 0 || total > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no complete HTTP head",
            ));
        }
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        if text.is_empty() {
            return Ok(lines);
        }
        lines.push(text);
    }
}

/// What the daemon does for a call: `DHCP.Allocate` returns a result, `DHCP.Release` none.
pub trait Service {
    fn call(&self, method: &str, args: CmdArgs) -> Result<Option<CniResult>, String>;
}

/// The daemon side: serves the calls of one connection until the client hangs up.
pub fn serve(stream: UnixStream, service: &dyn Service) -> Result<(), gob::Error> {
    let io = |e: std::io::Error| gob::Error(e.to_string());
    // A client that stops talking does not hold its thread for ever.
    stream.set_read_timeout(Some(IDLE_CLIENT)).map_err(io)?;
    let mut r = BufReader::new(stream.try_clone().map_err(io)?);
    let mut w = std::io::BufWriter::new(stream);
    let head = read_head(&mut r).map_err(io)?;
    if head.is_empty() {
        return Ok(());
    }
    let request = head.first().cloned().unwrap_or_default();
    let mut parts = request.split(' ');
    if parts.next() != Some("CONNECT") || parts.next() != Some(RPC_PATH) {
        // As Go's rpc handler answers anything else.
        let _ = w.write_all(b"HTTP/1.0 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n405 must CONNECT\n");
        let _ = w.flush();
        return Err(gob::Error(format!("not an RPC CONNECT: {request:?}")));
    }
    w.write_all(format!("HTTP/1.0 {CONNECTED}\n\n").as_bytes())
        .and_then(|_| w.flush())
        .map_err(io)?;
    let mut dec = Decoder::new(r);
    let mut enc = Encoder::new(w);
    loop {
        let req = match dec.decode() {
            Ok(v) => v,
            // The client hung up between calls.
            Err(_) => return Ok(()),
        };
        let args = CmdArgs::from_value(&dec.decode()?);
        let method = req.str("ServiceMethod");
        let outcome = match method.as_str() {
            "DHCP.Allocate" | "DHCP.Release" => service.call(&method, args),
            _ => Err(format!("rpc: can't find method {method}")),
        };
        let mut resp = vec![
            ("ServiceMethod".into(), Value::string(&method)),
            ("Seq".into(), Value::Uint(req.uint("Seq"))),
        ];
        let empty = Schema::Struct("invalidRequest", vec![]);
        match outcome {
            Ok(Some(result)) => {
                enc.encode(&response_schema(), &Value::Struct(resp))?;
                enc.encode(&result_schema(), &result_value(&result))?;
            }
            Ok(None) => {
                enc.encode(&response_schema(), &Value::Struct(resp))?;
                enc.encode(&empty, &Value::Struct(vec![]))?;
            }
            Err(e) => {
                resp.push(("Error".into(), Value::string(&e)));
                enc.encode(&response_schema(), &Value::Struct(resp))?;
                enc.encode(&empty, &Value::Struct(vec![]))?;
            }
        }
        enc.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Go 1.19's gob writes for struct{Address net.IPNet; Gateway net.IP} holding
    /// 10.1.2.3/24 and 10.1.2.1: net.IP goes as its 16 bytes, not as text.
    #[test]
    fn reads_addresses_as_go_writes_them() {
        let go: &[u8] = b"(\xff\x81\x03\x01\x01\x01R\x01\xff\x82\x00\x01\x02\x01\x07Address\x01\xff\x84\x00\x01\x07Gateway\x01\n\x00\x00\x00#\xff\x83\x03\x01\x01\x05IPNet\x01\xff\x84\x00\x01\x02\x01\x02IP\x01\n\x00\x01\x04Mask\x01\n\x00\x00\x00/\xff\x82\x01\x01\x10\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\n\x01\x02\x03\x01\x04\xff\xff\xff\x00\x00\x01\x10\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\n\x01\x02\x01\x00";
        let v = Decoder::new(go).decode().unwrap();
        assert_eq!(
            parse_ipnet(v.field("Address")).unwrap().to_string(),
            "10.1.2.3/24"
        );
        assert_eq!(parse_ip(&v, "Gateway"), Some("10.1.2.1".parse().unwrap()));
    }

    #[test]
    fn a_result_survives_the_wire() {
        let mut r = CniResult::default();
        r.ips.push(IpConfig {
            version: None,
            address: "10.140.1.50/24".parse().unwrap(),
            gateway: Some("10.140.1.1".parse().unwrap()),
            interface: None,
        });
        r.routes.push(Route::new(
            "0.0.0.0/0".parse().unwrap(),
            Some("10.140.1.1".parse().unwrap()),
        ));
        let mut buf = Vec::new();
        Encoder::new(&mut buf)
            .encode(&result_schema(), &result_value(&r))
            .unwrap();
        let back = result_from_value(&Decoder::new(&buf[..]).decode().unwrap()).unwrap();
        assert_eq!(back.ips, r.ips);
        assert_eq!(back.routes, r.routes);
    }
}
