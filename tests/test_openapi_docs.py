"""/schema documents what each route really answers: its error statuses with the error body
of its API (OpenAI's, or Anthropic's on /v1/messages), never Litestar's default 400 shape,
and `text/event-stream` where a route streams. Real answers are checked against it."""

from __future__ import annotations

import jsonschema
import pytest

MODEL_ROUTE_ERRORS = {"400", "401", "404", "408", "409", "413", "429", "503"}


@pytest.fixture(scope="module")
def schema(shared_client):
    return shared_client.get("/schema/openapi.json").json()


def answers(schema, method: str, path: str) -> dict:
    return schema["paths"][path][method]["responses"]


def error_ref(response: dict) -> str:
    return response["content"]["application/json"]["schema"]["$ref"]


def validator(schema, ref: str) -> jsonschema.Draft202012Validator:
    """A validator for one component, resolving the schema's own `$ref`s."""
    return jsonschema.Draft202012Validator({"$ref": ref, "components": schema["components"]})


def test_chat_completions_documents_its_errors_in_openai_shape_and_streams(schema):
    documented = answers(schema, "post", "/v1/chat/completions")
    assert MODEL_ROUTE_ERRORS <= set(documented)
    for status in MODEL_ROUTE_ERRORS:
        assert error_ref(documented[status]) == "#/components/schemas/OpenAIErrorBody", status
    assert set(documented["200"]["content"]) == {"application/json", "text/event-stream"}
    detail = schema["components"]["schemas"]["OpenAIErrorDetail"]
    assert set(detail["required"]) == {"message", "type", "param", "code"}


def test_messages_documents_its_errors_in_anthropic_shape(schema):
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        documented = answers(schema, "post", path)
        assert MODEL_ROUTE_ERRORS <= set(documented), path
        for status in MODEL_ROUTE_ERRORS:
            assert error_ref(documented[status]) == "#/components/schemas/AnthropicErrorBody"
    assert "text/event-stream" in answers(schema, "post", "/v1/messages")["200"]["content"]
    body = schema["components"]["schemas"]["AnthropicErrorBody"]
    assert body["properties"]["type"]["const"] == "error"


def test_no_route_documents_litestars_validation_error_shape(schema):
    ours = {"#/components/schemas/OpenAIErrorBody", "#/components/schemas/AnthropicErrorBody"}
    seen = 0
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) < 400 or (path, status) == ("/ready", "503"):
                    continue
                seen += 1
                assert error_ref(response) in ours, f"{method.upper()} {path} {status}"
    assert seen > 50


def test_streams_and_operator_routes_say_what_they_answer(schema):
    assert set(answers(schema, "get", "/admin/events")["200"]["content"]) == {"text/event-stream"}
    assert {"401", "403"} <= set(answers(schema, "get", "/admin/events"))
    metrics = answers(schema, "get", "/metrics")["200"]["content"]
    assert list(metrics) == ["text/plain; version=0.0.4; charset=utf-8"]
    ready = answers(schema, "get", "/ready")["503"]["content"]["application/json"]["schema"]
    assert ready == {"$ref": "#/components/schemas/Readiness"}
    assert "503" not in answers(schema, "get", "/v1/models/{model_id}")  # it runs nothing
    assert "404" in answers(schema, "get", "/v1/responses/{response_id}")


@pytest.mark.parametrize("path, body, status", [
    ("/v1/chat/completions", {"model": "fast", "messages": [{"role": "robot"}]}, 400),
    ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
     404),
    ("/v1/embeddings", {"model": "nope", "input": "x"}, 404),
    ("/v1/messages", {"model": "fast", "max_tokens": 0, "messages": []}, 400),
    ("/v1/messages", {"model": "nope", "max_tokens": 5,
                      "messages": [{"role": "user", "content": "x"}]}, 404),
    ("/v1/messages/count_tokens", {"model": "nope",
                                   "messages": [{"role": "user", "content": "x"}]}, 404),
])
def test_real_error_answers_match_their_documented_schema(schema, shared_client, path, body,
                                                          status):
    answer = shared_client.post(path, json=body)
    assert answer.status_code == status, answer.text
    documented = answers(schema, "post", path)[str(status)]
    validator(schema, error_ref(documented)).validate(answer.json())


def test_a_wrong_key_answers_the_documented_401(start_app):
    with start_app(api_keys=["secret"]) as client:
        schema = client.get("/schema/openapi.json", headers={"Authorization": "Bearer secret"})
        schema = schema.json()
        for path, body in (("/v1/chat/completions", {}), ("/v1/messages", {})):
            answer = client.post(path, json=body, headers={"x-api-key": "wrong"})
            assert answer.status_code == 401
            documented = answers(schema, "post", path)["401"]
            validator(schema, error_ref(documented)).validate(answer.json())
