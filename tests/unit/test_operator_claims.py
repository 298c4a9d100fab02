"""Which ExternalServer serves a car several of them list: the earliest, per broker and company."""

from __future__ import annotations

from external_server_operator.claims import Claimant, claim_keys, claimed_elsewhere, describe, index_entry

A = Claimant("2026-01-01T00:00:00Z", "fleet", "acme")
B = Claimant("2026-01-02T00:00:00Z", "fleet", "acme-2")
C_SAME_SECOND = Claimant("2026-01-02T00:00:00Z", "fleet", "acme-3")


def spec(*cars: str, host: str = "mqtt.fleet.svc", port: int | None = None) -> dict[str, object]:
    broker: dict[str, object] = {"host": host}
    if port is not None:
        broker["port"] = port
    return {"company": "acme_corp", "broker": broker, "cars": [{"name": c} for c in cars]}


def test_claim_keys() -> None:
    assert claim_keys(spec("b", "a", host="MQTT.fleet.svc.")) == [
        ("mqtt.fleet.svc", 1883, "acme_corp", "a"),
        ("mqtt.fleet.svc", 1883, "acme_corp", "b"),
    ]
    assert claim_keys({"company": "x"}) == []
    assert claim_keys({"company": "x", "broker": {"host": 1}, "cars": []}) == []
    meta = {"name": "acme", "namespace": "fleet", "creationTimestamp": A.created}
    assert index_entry(meta, spec("a")) == {("mqtt.fleet.svc", 1883, "acme_corp", "a"): A}


def test_the_earliest_serves() -> None:
    index: dict[tuple[str, int, str, str], list[Claimant]] = {}
    for who, s in ((A, spec("a", "b")), (B, spec("b", "c")), (C_SAME_SECOND, spec("b", "c"))):
        for key in claim_keys(s):
            index.setdefault(key, []).append(who)

    def lookup(key: tuple[str, int, str, str]) -> list[Claimant]:
        return index.get(key, [])

    assert claimed_elsewhere(A, claim_keys(spec("a", "b")), lookup) == {}
    assert claimed_elsewhere(B, claim_keys(spec("b", "c")), lookup) == {"b": A}
    # same second: namespace and name decide, deterministically
    assert claimed_elsewhere(C_SAME_SECOND, claim_keys(spec("b", "c")), lookup) == {"b": A, "c": B}
    # another broker (or port) is another car
    assert claimed_elsewhere(B, claim_keys(spec("b", host="other")), lookup) == {}
    assert claimed_elsewhere(B, claim_keys(spec("b", port=8883)), lookup) == {}
    assert claimed_elsewhere(B, claim_keys(spec("b")), None) == {}


def test_describe_is_bounded() -> None:
    many = {f"car_{i:03}": A for i in range(50)}
    text = describe(many)
    assert text.startswith("50 car(s)") and "car_019 (served by fleet/acme)" in text
    assert "car_020" not in text and text.endswith("and 30 more")
