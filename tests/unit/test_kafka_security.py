"""Kafka security settings reach both client families: librdkafka (client_config) and Faust."""

from __future__ import annotations

import faust
import pytest
from pydantic import SecretStr

from app.admin import client_config
from app.app import broker_credentials
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
