"""Make the files a TLS deployment with SuperNode authentication needs (with the ``cryptography`` package):

    python tools/federated_certs.py --out certificates --hosts 127.0.0.1 localhost --nodes 2

Writes ``OUT/ca.crt`` (give it to every SuperNode and to ``flwr``: ``--root-certificates``), ``OUT/ca.key``,
``OUT/server.crt`` and ``OUT/server.key`` (the SuperLink's ``--ssl-*`` files; the certificate is valid for the
``--hosts`` names/IPs the SuperNodes dial), and per SuperNode ``OUT/node_K`` (its private key,
``--auth-supernode-private-key``) and ``OUT/node_K.pub`` (register it: ``flwr supernode register OUT/node_K.pub``).
Node keys are ECDSA P-384 in OpenSSH format, as Flower expects. Keep the ``.key`` files and ``node_K`` private.
"""
import argparse
import datetime
import ipaddress
from pathlib import Path
from typing import List, Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 365


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path, encoding: str = 'pem') -> None:
    fmt = serialization.PrivateFormat.OpenSSH if encoding == 'openssh' else serialization.PrivateFormat.PKCS8
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    path.chmod(0o600)


def _certificate(subject: x509.Name, issuer: x509.Name, public_key, signing_key, is_ca: bool,
                 hosts: Sequence[str] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in hosts]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def write_certificates(out: Path, hosts: Sequence[str], num_nodes: int) -> List[Path]:
    """Write the CA, the SuperLink's certificate for ``hosts`` and ``num_nodes`` SuperNode key pairs; return the
    paths written."""
    if not hosts:
        raise ValueError('Give at least one host (the address the SuperNodes dial, e.g. 127.0.0.1).')
    out.mkdir(parents=True, exist_ok=True)
    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_cert = _certificate(_name('opentad-lora federated CA'), _name('opentad-lora federated CA'),
                           ca_key.public_key(), ca_key, is_ca=True)
    server_cert = _certificate(_name(hosts[0]), ca_cert.subject, server_key.public_key(), ca_key, is_ca=False,
                               hosts=hosts)
    written = [out / name for name in ('ca.crt', 'ca.key', 'server.crt', 'server.key')]
    written[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_key, written[1])
    written[2].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, written[3])
    for node in range(num_nodes):
        key = ec.generate_private_key(ec.SECP384R1())
        _write_key(key, out / f'node_{node}', encoding='openssh')
        (out / f'node_{node}.pub').write_bytes(key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b'\n')
        written += [out / f'node_{node}', out / f'node_{node}.pub']
    return written


def main(argv: Optional[List[str]] = None) -> List[Path]:
    parser = argparse.ArgumentParser(description='TLS certificates and SuperNode auth keys for a Flower deployment')
    parser.add_argument('--out', default='certificates', help='output folder')
    parser.add_argument('--hosts', nargs='+', default=['127.0.0.1', 'localhost'],
                        help="the SuperLink's names/IPs the SuperNodes and flwr dial (certificate SANs)")
    parser.add_argument('--nodes', type=int, default=2, help='SuperNode key pairs to make')
    args = parser.parse_args(argv)
    written = write_certificates(Path(args.out), args.hosts, args.nodes)
    print(f'Wrote {", ".join(p.name for p in written)} to {args.out}/.')
    return written


if __name__ == '__main__':
    main()
