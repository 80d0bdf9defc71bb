"""Kafka security settings reach both client families: librdkafka (client_config) and Faust."""

from __future__ import annotations

from pathlib import Path

import faust
import pytest
from pydantic import SecretStr

from app.explainer.faust_app import broker_credentials
from app.kafka.admin import client_config
from app.settings import Settings


def test_plaintext_needs_no_credentials() -> None:
    assert broker_credentials(Settings()) is None
    assert client_config(Settings())["security.protocol"] == "PLAINTEXT"


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_goes_to_faust_and_librdkafka(protocol: str) -> None:
    settings = Settings(
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="fraudlens",
        kafka_sasl_password=SecretStr("s3cret-password"),
    )
    credentials = broker_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.username == "fraudlens" and credentials.password == "s3cret-password"
    assert str(credentials.mechanism.value) == "SCRAM-SHA-512"
    assert (credentials.ssl_context is not None) == (protocol == "SASL_SSL")
    config = client_config(settings)
    assert config["sasl.mechanism"] == "SCRAM-SHA-512" and config["sasl.password"] == "s3cret-password"
    assert "s3cret-password" not in repr(settings)  # a secret never shows in logs of the settings


def test_tls_alone_gets_an_ssl_context() -> None:
    credentials = broker_credentials(Settings(kafka_security_protocol="SSL"))
    assert isinstance(credentials, faust.SSLCredentials)


def test_settings_never_show_their_secrets() -> None:
    marked = Settings(
        token_secret="token-secret-marker-0123456789",
        kafka_sasl_password="sasl-password-marker",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="fraudlens",
    )
    shown = [repr(marked), str(marked), marked.model_dump_json(), repr(marked.model_dump())]
    for text in shown:
        assert "token-secret-marker" not in text and "sasl-password-marker" not in text, text
    assert "fraudlens" in repr(marked), "the username is not a secret"


# A self-signed test CA (no key kept): stands in for the private CA of a production cluster.
TEST_CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBjzCCATWgAwIBAgIUFLz7F6Vd4mcNzt265X+PDHzIty4wCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRZnJhdWRsZW5zIHRlc3QgQ0EwIBcNMjYxMTI5MDk0NDE5WhgP
MjEyNjExMDUwOTQ0MTlaMBwxGjAYBgNVBAMMEWZyYXVkbGVucyB0ZXN0IENBMFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEw1gH38KKAA1RVW2GiT2KPp8QaBLHtdvL
oPnurSSLkMgBDGxMCbaMlSINw/YfJBJ1vK10qtajPk6gLXl26/Ea4qNTMFEwHQYD
VR0OBBYEFLCAo0kSzaTJ+5FIKWRruZ4X3RarMB8GA1UdIwQYMBaAFLCAo0kSzaTJ
+5FIKWRruZ4X3RarMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIg
e5coKpUCW37swD9pkHswGIxb7aITr2u9otpwPGDIzsQCIQCoeF3f63iEEGKu+M6H
KKN5Nn+cKBzRLKeOvPVRhbN1Sw==
-----END CERTIFICATE-----
"""


def test_a_private_ca_reaches_both_client_families(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(TEST_CA_PEM)
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_ssl_ca_file=ca_file)
    assert client_config(settings)["ssl.ca.location"] == str(ca_file)
    credentials = broker_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials) and credentials.ssl_context is not None
    assert credentials.ssl_context.cert_store_stats()["x509_ca"] == 1, "only the configured CA"
    assert "ssl.ca.location" not in client_config(Settings())
