"""Fuzz the OpenAPI schema against the running server: whatever the input, never a 5xx."""

import pytest

schemathesis = pytest.importorskip('schemathesis', reason='schemathesis is not installed (the [dev] extra)')
from hypothesis import HealthCheck, given, settings  # noqa: E402


def test_no_server_errors_for_any_schema_input(server):
    schema = schemathesis.openapi.from_url(f'{server.url}/openapi.json')
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {'/v1/generate', '/v1/images/generations', '/v1/models', '/readyz'}
    seen = []
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
        def fuzz(case):
            response = case.call(timeout=60)
            seen.append(response.status_code)
            assert response.status_code < 500, f'{case.method} {case.path} -> {response.status_code}: {response.text[:300]}'
            if response.status_code >= 400 and case.path != '/readyz':
                assert set(response.json()) == {'error'}
        fuzz()
    assert len(seen) > 60 and any(code >= 400 for code in seen) and any(code == 200 for code in seen)
    assert server.client.get('/readyz').status_code == 200      # and the server is still up and ready
