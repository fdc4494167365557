//! Certificates for tests, made by the `openssl` command as an operator
//! would make them: a private CA, a server certificate for a loopback
//! address signed by it, and a client certificate signed by it (ECDSA
//! P-256 keys, PKCS#8 PEM).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and what it signed, as files in one directory.
pub struct TestCa {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    ca_key: PathBuf,
}

/// A certificate and its key.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `name` in `dir`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        std::fs::create_dir_all(dir).expect("the CA directory");
        let (ca_cert, ca_key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            path(&ca_key),
            "-out",
            path(&ca_cert),
        ]);
        TestCa { dir: dir.to_owned(), ca_cert, ca_key }
    }

    /// A server certificate for IP address `ip`.
    pub fn server(&self, name: &str, ip: &str) -> Issued {
        self.issue(name, &format!("subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n"))
    }

    /// A client certificate.
    pub fn client(&self, name: &str) -> Issued {
        self.issue(name, "extendedKeyUsage=clientAuth\n")
    }

    fn issue(&self, name: &str, extensions: &str) -> Issued {
        let (cert, key) = (self.dir.join(format!("{name}.crt")), self.dir.join(format!("{name}.key")));
        let (csr, ext) = (self.dir.join(format!("{name}.csr")), self.dir.join(format!("{name}.ext")));
        std::fs::write(&ext, extensions).expect("the extensions file");
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            path(&key),
            "-out",
            path(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            path(&csr),
            "-CA",
            path(&self.ca_cert),
            "-CAkey",
            path(&self.ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            path(&ext),
            "-out",
            path(&cert),
        ]);
        Issued { cert, key }
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

fn openssl(args: &[&str]) {
    let out =
        Command::new("openssl").args(args).output().expect("openssl (Debian package openssl; .ci/install installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
