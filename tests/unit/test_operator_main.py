"""Command line of external-server-operator."""

from __future__ import annotations

from external_server_operator.main import liveness_endpoint, parse_args


def test_default_is_cluster_wide() -> None:
    args = parse_args([], env={})
    assert args.namespaces == []
    assert (args.liveness_host, args.liveness_port) == ("0.0.0.0", 8081)


def test_namespaces_from_args_or_env() -> None:
    assert parse_args(["-n", "a", "--namespace", "b"], env={}).namespaces == ["a", "b"]
    env = {"EXTERNAL_SERVER_OPERATOR_NAMESPACES": "x, y,,"}
    assert parse_args([], env=env).namespaces == ["x", "y"]
    assert parse_args(["-n", "z"], env=env).namespaces == ["z"]
    assert parse_args(["-A"], env=env).namespaces == []


def test_liveness() -> None:
    env = {
        "EXTERNAL_SERVER_OPERATOR_LIVENESS_HOST": "127.0.0.1",
        "EXTERNAL_SERVER_OPERATOR_LIVENESS_PORT": "9",
    }
    args = parse_args([], env=env)
    assert liveness_endpoint(args.liveness_host, args.liveness_port) == "http://127.0.0.1:9/healthz"
    assert liveness_endpoint("::1", 8081) == "http://[::1]:8081/healthz"
    assert liveness_endpoint("0.0.0.0", 0) is None


def test_liveness_url_passthrough() -> None:
    assert (
        parse_args(["--liveness", "http://127.0.0.1:1/healthz"], env={}).liveness
        == "http://127.0.0.1:1/healthz"
    )
    assert parse_args([], env={}).liveness is None
