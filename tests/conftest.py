"""Test-wide fixtures. Each real engine's harness (start, wait-ready, stop) lives in tests/harness/."""

pytest_plugins: list[str] = [
    "tests.harness.redis",
    "tests.harness.kafka",
    "tests.harness.s3",
]
