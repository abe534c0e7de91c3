//! Certificates for the local stack, made with the `openssl` command: a CA per stack, serving
//! certificates for Kafka's SASL_SSL listener and the API server, and client certificates for
//! the API server's admin. Keys are EC P-256 (fast to make) in unencrypted PKCS#8 PEM, which
//! both Kafka's PEM key store and rustls read.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// A certificate authority on disk.
#[derive(Debug, Clone)]
pub struct Ca {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate and its key on disk.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&str]) -> Result<(), Error> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .map_err(|e| Error::io("running openssl (apt-get install openssl)", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Component {
            component: "openssl".into(),
            reason: format!("`openssl {}` failed", args.join(" ")),
            log_tail: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("stack paths are UTF-8")
}

impl Ca {
    /// A new self-signed CA named `name` in `dir`.
    pub fn create(dir: &Path, name: &str) -> Result<Self, Error> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            s(&key),
            "-out",
            s(&cert),
        ])?;
        Ok(Self { cert, key })
    }

    /// A certificate signed by this CA. `subject` is an openssl subject such as
    /// `/CN=admin/O=system:masters`; `sans` are subjectAltName entries such as `IP:127.0.0.1`
    /// (empty for a client certificate).
    pub fn issue(
        &self,
        dir: &Path,
        name: &str,
        subject: &str,
        sans: &[&str],
    ) -> Result<Pair, Error> {
        let key = dir.join(format!("{name}.key"));
        let csr = dir.join(format!("{name}.csr"));
        let cert = dir.join(format!("{name}.crt"));
        let ext = dir.join(format!("{name}.ext"));
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            s(&key),
            "-out",
            s(&csr),
        ])?;
        let mut extensions = String::from("basicConstraints=CA:FALSE\n");
        if sans.is_empty() {
            extensions
                .push_str("keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n");
        } else {
            extensions.push_str(
                "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
            );
            extensions.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        std::fs::write(&ext, extensions)
            .map_err(|e| Error::io("writing a cert extension file", e))?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-CA",
            s(&self.cert),
            "-CAkey",
            s(&self.key),
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            s(&ext),
            "-out",
            s(&cert),
        ])?;
        let _ = std::fs::remove_file(csr);
        let _ = std::fs::remove_file(ext);
        Ok(Pair { cert, key })
    }
}

/// An RSA key pair (private key and public key, PEM) for signing service-account tokens.
pub fn rsa_key_pair(dir: &Path, name: &str) -> Result<Pair, Error> {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    openssl(&["genrsa", "-out", s(&key), "2048"])?;
    openssl(&["rsa", "-in", s(&key), "-pubout", "-out", s(&public)])?;
    Ok(Pair { cert: public, key })
}
