//! The realm's certificates: a CA per realm, a key made on each node (it
//! never leaves the node), and node certificates the CA signs from a
//! certificate signing request.
//!
//! A node certificate names the node and its realm (CN = node name, URI SAN
//! `macula://<realm>/node/<name>`) and is valid for TLS server and client
//! use: nats-server presents the same certificate on its leafnode and
//! cluster listeners and when it dials them. Its DNS names are the node's
//! name and `<name>.local` (mDNS), so other nodes can verify it by the name
//! they dial. The CA decides what a certificate says; what a request asks
//! for beyond its public key is ignored.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// How long a realm CA is valid.
const CA_DAYS: u64 = 3650;
/// How long a node certificate is valid; renewed once less than a third is left.
pub const NODE_DAYS: u64 = 365;

/// A PKI failure, said in terms of what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct PkiError {
    what: String,
    #[source]
    source: rcgen::Error,
}

fn err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError { what, source }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a node certificate says, read back from its PEM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    /// The common name: the node's name (or the CA's title).
    pub common_name: String,
    /// The realm from the `macula://<realm>/…` URI, if any.
    pub realm: Option<String>,
    /// Seconds since the epoch after which the certificate is no longer valid.
    pub not_after: i64,
    /// SHA-256 of the DER certificate, hex.
    pub sha256: String,
    /// The serial number, hex.
    pub serial: String,
    /// SHA-256 of the certificate's public key, hex: which key it is for.
    pub key_sha256: String,
    /// SHA-256 of its SubjectPublicKeyInfo (DER), hex: what nats-server's
    /// `pinned_certs` lists.
    pub spki_sha256: String,
}

/// The URI SAN that names `node` in `realm`.
pub fn node_uri(realm: &str, node: &str) -> String {
    format!("macula://{realm}/node/{node}")
}

/// SHA-256 of a DER blob, lowercase hex.
pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn validity(days: u64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    // An hour back: a node whose clock is a little behind the CA's still
    // accepts a certificate made just now.
    let now = SystemTime::now();
    let from = now - Duration::from_secs(3600);
    let to = now + Duration::from_secs(days * 86_400);
    (from.into(), to.into())
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the kernel's random number generator failed");
    // Positive, non-zero first byte: a DER INTEGER of fixed length.
    b[0] = (b[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&b)
}

/// A new realm CA (development mode): self-signed, allowed to sign node
/// certificates only (path length 0).
pub fn create_ca(realm: &str) -> Result<CertAndKey, PkiError> {
    let key = KeyPair::generate().map_err(err("generating the realm CA's key"))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, format!("Macula realm {realm} CA"));
    p.distinguished_name
        .push(DnType::OrganizationName, realm.to_string());
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let uri = format!("macula://{realm}")
        .try_into()
        .map_err(err("the realm's URI"))?;
    p.subject_alt_names = vec![SanType::URI(uri)];
    (p.not_before, p.not_after) = validity(CA_DAYS);
    p.serial_number = Some(random_serial());
    let cert = p.self_signed(&key).map_err(err("signing the realm CA"))?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Check a CA the operator gives a realm (`tls_mode: production`): a CA
/// certificate, valid now, for the key in `key_pem`, which must be ECDSA
/// P-256 (node certificates and the realm roster are signed with it, and
/// every node checks the roster's signature as P-256). Returns the days
/// it has left. The error says what is wrong and how to make one that
/// works.
pub fn check_operator_ca(cert_pem: &str, key_pem: &str) -> Result<i64, String> {
    let der = cert_der(cert_pem).ok_or("the certificate file holds no PEM certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|b| b.value.ca);
    if !is_ca {
        return Err("the certificate is not a CA (basicConstraints CA:TRUE is missing)".into());
    }
    if let Ok(Some(ku)) = cert.key_usage() {
        if !ku.value.key_cert_sign() {
            return Err("the CA's keyUsage does not allow keyCertSign".into());
        }
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (from, to) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    if now < from || now >= to {
        return Err(format!(
            "the CA is not valid now (from {} to {})",
            cert.validity().not_before,
            cert.validity().not_after
        ));
    }
    let p256 = "the CA's key must be ECDSA P-256, in PKCS#8 PEM (e.g. `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key`)";
    if key_pem.contains("BEGIN EC PRIVATE KEY") {
        return Err(
            "the key is in SEC1 form (BEGIN EC PRIVATE KEY): convert it to PKCS#8 with \
             `openssl pkcs8 -topk8 -nocrypt -in ca.key -out ca-pkcs8.key`"
                .into(),
        );
    }
    if KeyPair::from_pem(key_pem).is_err() {
        return Err(format!(
            "the key file holds no private key this node can use: {p256}"
        ));
    }
    if !same_public_key(cert_pem, key_pem) {
        return Err("the key is not the CA certificate's key".into());
    }
    let probe = b"maculaos: operator CA check";
    if !sign(key_pem, probe).is_ok_and(|sig| verify(cert_pem, probe, &sig)) {
        return Err(p256.into());
    }
    Ok((to - now) / 86_400)
}

/// A new private key for this node (ECDSA P-256), PEM.
pub fn new_key() -> Result<String, PkiError> {
    Ok(KeyPair::generate()
        .map_err(err("generating the node's key"))?
        .serialize_pem())
}

/// A certificate signing request for `node`, signed with `key_pem` (which
/// proves the requester holds the key).
pub fn csr(key_pem: &str, node: &str) -> Result<String, PkiError> {
    let key = KeyPair::from_pem(key_pem).map_err(err("reading the node's key"))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, node);
    p.serialize_request(&key)
        .map_err(err("making the signing request"))?
        .pem()
        .map_err(err("encoding the signing request"))
}

/// Sign a node certificate for the key in `csr_pem`: CN `node`, URI SAN
/// naming node and realm, DNS names `node`, `node.local` and `names`, and
/// `ips`.
pub fn sign_node(
    ca: &CertAndKey,
    realm: &str,
    node: &str,
    names: &[String],
    ips: &[IpAddr],
    csr_pem: &str,
) -> Result<String, PkiError> {
    let request = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(err("reading the node's signing request"))?;
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(err("reading the realm CA's key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .map_err(err("reading the realm CA's certificate"))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, node);
    p.distinguished_name
        .push(DnType::OrganizationName, realm.to_string());
    let uri = node_uri(realm, node)
        .try_into()
        .map_err(err("the node's URI"))?;
    let mut sans = vec![SanType::URI(uri)];
    let mut dns_names = vec![node.to_string(), format!("{node}.local")];
    for n in names {
        if !n.is_empty() && !dns_names.contains(n) {
            dns_names.push(n.clone());
        }
    }
    for dns in dns_names {
        sans.push(SanType::DnsName(
            dns.try_into().map_err(err("the node's DNS name"))?,
        ));
    }
    sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    p.subject_alt_names = sans;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    (p.not_before, p.not_after) = validity(NODE_DAYS);
    p.serial_number = Some(random_serial());
    Ok(p.signed_by(&request.public_key, &issuer)
        .map_err(err("signing the node's certificate"))?
        .pem())
}

/// The DER of the first certificate in `pem`.
pub fn cert_der(pem: &str) -> Option<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    (p.label == "CERTIFICATE").then_some(p.contents)
}

/// Read back what a certificate says.
pub fn cert_info(pem: &str) -> Option<CertInfo> {
    use x509_parser::extensions::GeneralName;
    let der = cert_der(pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let realm = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|s| {
            s.value.general_names.iter().find_map(|n| match n {
                GeneralName::URI(u) => u
                    .strip_prefix("macula://")
                    .map(|r| r.split('/').next().unwrap_or_default().to_string()),
                _ => None,
            })
        });
    Some(CertInfo {
        common_name,
        realm,
        not_after: cert.validity().not_after.timestamp(),
        sha256: sha256_hex(&der),
        serial: cert.raw_serial_as_string().replace(':', ""),
        key_sha256: sha256_hex(cert.public_key().subject_public_key.data.as_ref()),
        spki_sha256: sha256_hex(cert.public_key().raw),
    })
}

/// Sign `msg` with the key in `key_pem` (ECDSA P-256, SHA-256, ASN.1).
pub fn sign(key_pem: &str, msg: &[u8]) -> Result<Vec<u8>, PkiError> {
    use rcgen::SigningKey;
    let key = KeyPair::from_pem(key_pem).map_err(err("reading the signing key"))?;
    key.sign(msg).map_err(err("signing"))
}

/// Whether `sig` is the signature by `cert_pem`'s key of `msg` (see [`sign`]).
pub fn verify(cert_pem: &str, msg: &[u8], sig: &[u8]) -> bool {
    let Some(der) = cert_der(cert_pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return false;
    };
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        cert.public_key().subject_public_key.data.as_ref(),
    )
    .verify(msg, sig)
    .is_ok()
}

/// The DNS names and addresses a certificate carries (addresses as text).
pub fn san_names(pem: &str) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Some(der) = cert_der(pem) else {
        return Vec::new();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return Vec::new();
    };
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => <[u8; 4]>::try_from(*b)
                            .ok()
                            .map(|a| IpAddr::from(a).to_string()),
                        16 => <[u8; 16]>::try_from(*b)
                            .ok()
                            .map(|a| IpAddr::from(a).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The SHA-256 of the public key a signing request is for (as
/// [`CertInfo::key_sha256`]), if the request parses and its signature by
/// that key is good (its sender holds the key).
pub fn csr_key_sha256(csr_pem: &str) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, p) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).ok()?;
    let (_, req) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&p.contents).ok()?;
    req.verify_signature().ok()?;
    Some(sha256_hex(
        req.certification_request_info
            .subject_pki
            .subject_public_key
            .data
            .as_ref(),
    ))
}

/// Whether the certificate in `cert_pem` is for the private key in `key_pem`.
pub fn same_public_key(cert_pem: &str, key_pem: &str) -> bool {
    let (Some(der), Ok(key)) = (cert_der(cert_pem), KeyPair::from_pem(key_pem)) else {
        return false;
    };
    x509_parser::parse_x509_certificate(&der)
        .is_ok_and(|(_, c)| c.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

/// Whether `cert_pem` was signed by the CA in `ca_pem` (checks the signature,
/// not the validity period).
pub fn signed_by(cert_pem: &str, ca_pem: &str) -> bool {
    let (Some(c), Some(a)) = (cert_der(cert_pem), cert_der(ca_pem)) else {
        return false;
    };
    let (Ok((_, cert)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(&c),
        x509_parser::parse_x509_certificate(&a),
    ) else {
        return false;
    };
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_the_key_that_signed_it() {
        let key = new_key().unwrap();
        let req = csr(&key, "n").unwrap();
        let ca = create_ca("r").unwrap();
        let cert = sign_node(&ca, "r", "n", &[], &[], &req).unwrap();
        assert_eq!(
            csr_key_sha256(&req),
            Some(cert_info(&cert).unwrap().key_sha256)
        );
        assert_eq!(csr_key_sha256("junk"), None);
    }

    #[test]
    fn an_operator_ca_must_be_a_p256_ca_with_its_own_key() {
        let ca = create_ca("io.macula").unwrap();
        let days = check_operator_ca(&ca.cert_pem, &ca.key_pem).unwrap();
        assert!((3600..=3650).contains(&days), "{days}");
        let other = new_key().unwrap();
        assert_eq!(
            check_operator_ca(&ca.cert_pem, &other).unwrap_err(),
            "the key is not the CA certificate's key"
        );
        // A node certificate is no CA.
        let req = csr(&other, "n").unwrap();
        let node = sign_node(&ca, "io.macula", "n", &[], &[], &req).unwrap();
        assert!(check_operator_ca(&node, &other)
            .unwrap_err()
            .contains("not a CA"));
        // An Ed25519 CA: nodes check the roster's signature as P-256.
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&ed).unwrap();
        assert!(check_operator_ca(&cert.pem(), &ed.serialize_pem())
            .unwrap_err()
            .contains("ECDSA P-256"));
        assert!(check_operator_ca("junk", &ca.key_pem)
            .unwrap_err()
            .contains("no PEM certificate"));
        assert!(check_operator_ca(&ca.cert_pem, "junk")
            .unwrap_err()
            .contains("no private key"));
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(check_operator_ca(&ca.cert_pem, sec1)
            .unwrap_err()
            .contains("openssl pkcs8 -topk8"));
    }

    #[test]
    fn a_node_certificate_names_node_and_realm_and_chains_to_the_ca() {
        let ca = create_ca("io.macula").unwrap();
        let key = new_key().unwrap();
        let req = csr(&key, "anything-the-node-asks").unwrap();
        let ip: IpAddr = "10.0.2.15".parse().unwrap();
        let cert = sign_node(
            &ca,
            "io.macula",
            "edge-01",
            &["edge.example".into()],
            &[ip],
            &req,
        )
        .unwrap();
        let info = cert_info(&cert).unwrap();
        // The CA's choice of name, not the request's.
        assert_eq!(info.common_name, "edge-01");
        assert_eq!(info.realm.as_deref(), Some("io.macula"));
        assert!(signed_by(&cert, &ca.cert_pem));
        let other = create_ca("io.macula").unwrap();
        assert!(!signed_by(&cert, &other.cert_pem));
        let days = (info.not_after
            - SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64)
            / 86_400;
        assert!(
            (NODE_DAYS as i64 - 1..=NODE_DAYS as i64).contains(&days),
            "{days}"
        );
        let ca_info = cert_info(&ca.cert_pem).unwrap();
        assert_eq!(ca_info.realm.as_deref(), Some("io.macula"));
        assert_ne!(ca_info.serial, info.serial);
        assert_eq!(
            san_names(&cert),
            ["edge-01", "edge-01.local", "edge.example", "10.0.2.15"]
        );
    }

    #[test]
    fn a_tampered_request_is_refused() {
        let ca = create_ca("io.macula").unwrap();
        let key = new_key().unwrap();
        let req = csr(&key, "n").unwrap();
        // Flip one character inside the base64 body: the signature no longer holds.
        let mut lines: Vec<String> = req.lines().map(str::to_string).collect();
        let l = &mut lines[3];
        let c = if l.starts_with('A') { "B" } else { "A" };
        l.replace_range(0..1, c);
        let bad = lines.join("\n");
        let e = sign_node(&ca, "io.macula", "n", &[], &[], &bad).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("reading the node's signing request"),
            "{e}"
        );
    }
}
